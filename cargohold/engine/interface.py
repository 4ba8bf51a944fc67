"""What the engine's helpers see of a volume: the small internal interface of ``Volume``.

``volume.Volume`` is the only implementation. The helpers that the volume itself calls
(``rebuild``, ``local_reads``) type against ``VolumeCore`` instead of importing
``volume``, so the engine's modules depend one way (``.importlinter``, contract
``engine-one-way``)::

    control -> scrubber | snapshots | importer -> volume -> rebuild | local_reads
            -> fanout | compare | interface -> replica_link | faults

The helpers that call the volume (``snapshots``, ``scrubber``, ``importer``, ``control``)
import ``Volume`` and use the same public names. No module reaches into another's private
names (``tests/unit/engine/test_interface.py`` checks).

The interface, beyond the plain attributes:

- ``hold()``: an async context manager: new mutations wait, the ones in flight are
  answered, then the block runs; mutations resume when it ends (also on errors and
  cancellation). Snapshots, reverts, the end of a rebuild and scrub's settling compare
  use it; only one holder at a time.
- ``window(lo, hi)`` / ``window_done()``: mutations that touch bytes [lo, hi) wait until
  ``window_done`` (a rebuild step copying that range).
- ``readers()``: the RW replicas in the order reads try them (the local one first, the
  others in turn).
- ``check_usable()``: raises Fenced once a newer engine owns a replica.
- ``spawn(coro)``: runs a background task for the volume's life; ``close()`` cancels it.
"""

from __future__ import annotations

import collections
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from cargohold.engine.replica_link import ReplicaLink
from cargohold.settings import EngineSettings


@runtime_checkable
class VolumeCore(Protocol):
    name: str
    epoch: int  # this engine's
    gen: int  # the last generation handed out
    settings: EngineSettings
    links: list[ReplicaLink]  # every replica, in the write set or not
    counters: collections.Counter[str]  # shown in the engine's status

    @property
    def size(self) -> int: ...

    def hold(self) -> AbstractAsyncContextManager[None]: ...

    def window(self, lo: int, hi: int) -> None: ...

    def window_done(self) -> None: ...

    def readers(self) -> list[ReplicaLink]: ...

    def check_usable(self) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...
