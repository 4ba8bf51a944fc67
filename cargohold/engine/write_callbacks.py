"""Writes started without a task: ``Volume.write_nowait``, the path of the NBD frontend's
aligned writes (``frontend/nbd_connection.py``).

``Volume.write`` is a coroutine: per NBD write the frontend made a Task, and the chain of
coroutines under it (the request, the span lock, the write, the fan-out, the wait for the
answers) was the largest part of the engine's own Python per write. ``write_nowait`` does
the same checks and bookkeeping with plain calls: the generation is handed out and the
request queued on every replica of the write set at once (``FanOut.start``), and a
callback judges the answers when the last one is in and calls the frontend back with
``None`` or the request's error. Every rule of ``Volume._fan_out`` holds: acknowledged
only when ``min_replicas`` stored it (invariant 1), a replica that errs, times out or
misses a generation dropped, a fenced replica fencing the engine, ``hold`` waiting for
these writes too (they count in the volume's in-flight number).

What ``write_nowait`` does not do is wait: when mutations are held, a rebuild step covers
the range, the engine is fenced or the write set is too small, it starts nothing and
returns False, and the caller takes the task path (``await write(...)``), which waits or
raises as it always did.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from cargohold.engine.fanout import FanOut
from cargohold.engine.replica_link import ReplicaLink
from cargohold.errors import CargoholdError
from cargohold.protocol.replica_wire import FLAG_FUA, Op
from cargohold.settings import EngineSettings


class CallbackWrites:
    """``write_nowait`` for ``Volume`` (a mixin: the volume supplies the state below)."""

    gen: int
    settings: EngineSettings
    fanout: FanOut
    fenced: str | None
    counters: collections.Counter[str]
    io: Any  # io_stats.IoStats
    _running: asyncio.Event
    _window: tuple[int, int] | None
    _inflight: int
    _idle: asyncio.Event

    def write_set(self) -> list[ReplicaLink]:
        raise NotImplementedError

    def check_usable(self) -> None:
        raise NotImplementedError

    def write_nowait(
        self, offset: int, data: memoryview, fua: bool, done: Callable[[Exception | None], None]
    ) -> bool:
        """Start a write of ``data`` at ``offset``: ``done(None)`` once enough replicas
        stored it, else ``done(error)``; called from the event loop, never before this
        returns. False: nothing was started (module doc)."""
        n = len(data)
        window = self._window
        if (
            self.fenced
            or not self._running.is_set()
            or (window is not None and offset < window[1] and window[0] < offset + n)
        ):
            return False
        targets = self.write_set()
        if len(targets) < self.settings.min_replicas:
            return False
        self.gen += 1
        gen = self.gen
        self._inflight += 1
        self._idle.clear()
        flags = FLAG_FUA if fua else 0

        def finished(stored: int, t0: float) -> None:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
            self.io.observe("write", t0)
            try:
                self.check_usable()
                self.fanout.require(stored, "write")
            except CargoholdError as e:
                done(e)
                return
            self.counters["written_bytes"] += n
            done(None)

        self.fanout.start(
            targets,
            lambda c: c.send(Op.WRITE, offset, n, data, flags, generation=gen),
            gen,
            finished,
        )
        return True
