"""One operation at a time per volume: a second concurrent RPC on the same volume is
answered ABORTED at once (the CSI spec's "operation pending for volume"), and the CO
retries. Shared by the controller and node services of one ``cargohold csi``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from cargohold.csi.errors import Code, CsiError


class VolumeLocks:
    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._busy: dict[str, str] = {}

    @contextlib.contextmanager
    def hold(self, key: str, what: str) -> Iterator[None]:
        with self._mu:
            other = self._busy.get(key)
            if other is not None:
                raise CsiError(
                    Code.ABORTED, f"an operation on {key} is in progress ({other}); try again"
                )
            self._busy[key] = what
        try:
            yield
        finally:
            with self._mu:
                self._busy.pop(key, None)
