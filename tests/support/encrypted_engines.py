"""Encrypted volumes in tests: engines started with their data keys through a pipe
(``--data-key-fd``, as the agent does), the check that no key reached their logs, and the
grep of replica files for a plaintext pattern."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.engine import EngineProc
from tests.support.replica_cluster import ReplicaCluster


class EncryptedEngines:
    """Starts engines of one encrypted volume over ``cluster``; ``close`` stops them and
    checks their logs: no traceback, and none of ``secrets`` in any form."""

    def __init__(
        self, cluster: ReplicaCluster, workdir: Path, vid: bytes, secrets: Sequence[bytes]
    ) -> None:
        self.cluster, self.workdir, self.vid = cluster, workdir, vid
        self.secrets = list(secrets)
        self.started: list[EngineProc] = []

    def __call__(self, epoch: int, keys: bytes | Sequence[bytes]) -> EngineProc:
        """An engine at ``epoch`` given ``keys`` (one, or several newest first)."""
        r, w = os.pipe()
        os.write(w, keys if isinstance(keys, bytes) else b"".join(keys))
        os.close(w)
        extra = ["--data-key-fd", str(r), "--encryption-key-id", self.vid.hex()]
        e = EngineProc(
            "vol", self.cluster.specs(), epoch, str(self.workdir), local="r0", extra=extra,
            pass_fds=(r,),
        )  # fmt: skip
        try:
            e.start()
        finally:
            os.close(r)
        self.started.append(e)
        return e

    def close(self) -> None:
        for e in self.started:
            e.stop()
        for e in self.started:
            out = e.output()
            assert "Traceback" not in out and "Logging error" not in out, out
            for k in self.secrets:  # a key is never logged
                assert k.hex() not in out and base64.b64encode(k).decode() not in out
                assert ", ".join(map(str, k[:8])) not in out  # nor as a list


def engines_of(
    cluster: ReplicaCluster, workdir: Path, vid: bytes, secrets: Sequence[bytes]
) -> Iterator[EncryptedEngines]:
    """For a fixture: ``yield from engines_of(...)``."""
    started = EncryptedEngines(cluster, workdir, vid, secrets)
    yield started
    started.close()


def files_holding(root: Path, glob: str, needle: bytes) -> list[str]:
    """Every file under ``root`` matching ``glob`` whose bytes contain ``needle``."""
    return [
        str(p.relative_to(root))
        for p in sorted(root.glob(glob))
        if p.is_file() and needle in p.read_bytes()
    ]
