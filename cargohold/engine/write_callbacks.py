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

``write_ordered`` (the encrypting device's tag block and data: ``frontend/
encrypted_device.py``) queues several writes back to back on every replica of the write set,
in order, with consecutive generations and no await between them, then awaits all the
answers: one round trip for all. A replica's server applies a connection's mutations in
order and refuses every one after a failed one (docs/formats/replica-wire.md, "Rules"),
so a later write never lands on a replica where an earlier one failed. Only when every
replica's server said so at HELLO (``stop_on_failure``); else the writes go one at a time,
each answered before the next is sent, as before. ``write_ordered_nowait`` is the same
without a task, for the encrypting device's writes without one: it starts what
``write_ordered`` would start at once, or nothing (False), and calls back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from cargohold.engine.fanout import AllAnswered, Deadlines, FanOut, answers
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import CargoholdError, ReplicaIOError
from cargohold.protocol.replica_wire import FLAG_FUA, Op, Reply
from cargohold.settings import EngineSettings

log = logging.getLogger("cargohold.engine")
_WRITE = Op.WRITE  # per write per replica: an enum member's lookup costs 5x a global's
_RW = Mode.RW


class CallbackWrites:
    """``write_nowait`` for ``Volume`` (a mixin: the volume supplies the state below)."""

    name: str
    links: list[ReplicaLink]
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
    _window_free: asyncio.Event

    def write_set(self) -> list[ReplicaLink]:
        raise NotImplementedError

    def verdict(self, stored: int, what: str) -> None:
        """A mutation (or FLUSH) ``stored`` on that many replicas: raise unless the engine
        is not fenced, at least ``min_replicas`` stored it and a current (RW) replica is
        left. Replicas being rebuilt (WO) count, but never alone: with none current the
        volume is faulted, a WO replica can never become current (nothing to rebuild it
        from), and the next engine would take an RW one's older content as current — a
        write acknowledged on WO replicas only would be lost (invariant 1)."""
        self.check_usable()
        self.fanout.require(stored, what)
        for link in self.links:  # per write: a plain loop, no generator
            if link.mode is _RW:
                return
        raise ReplicaIOError(
            f"volume {self.name}: {what} stored on {stored} replicas being rebuilt and "
            "no current one: not acknowledged"
        )

    def check_usable(self) -> None:
        raise NotImplementedError

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        raise NotImplementedError

    async def write_ordered(
        self,
        writes: list[tuple[int, Any]],
        ready: Callable[[bool], list[tuple[int, Any]]] | None = None,
    ) -> None:
        """Write each (offset, data) of ``writes`` (no FUA), on each replica in this order
        and never one where an earlier one failed (module doc); return once every replica
        answered them all and at least ``min_replicas`` stored them all, else raise
        ReplicaIOError (nothing is acknowledged that is not on enough replicas). A replica
        that failed any of them is dropped. Waits, as a write does, while mutations are
        held or a rebuild step covers any of the ranges: then for all of them.
        ``ready(back_to_back)`` is called right before the first is queued, with no await
        between, and returns the writes to send (``writes`` or some of them, in order):
        the caller fills the buffers then, so that what it queues later holds what it
        changed before; ``back_to_back`` says whether they go back to back (every
        replica's server stops a session at a failed mutation) or one at a time."""
        self.check_usable()
        if self._window is not None or not self._running.is_set():
            await self._until_free([(off, len(d)) for off, d in writes])
        self.check_usable()
        targets = self.write_set()
        self.fanout.enough(targets)
        back_to_back = all(getattr(link.client, "stop_on_failure", False) for link in targets)
        if ready is not None:
            writes = ready(back_to_back)
        if not back_to_back:
            # an older server: one at a time, as before (the first queued at once: the
            # checks above just passed, and nothing awaits in between)
            for offset, data in writes:
                await self.write(offset, memoryview(data), False)
            return
        first = self.gen + 1
        self.gen += len(writes)
        self._inflight += 1
        self._idle.clear()
        try:
            stored, t0 = await self._ordered(targets, writes, first)
            for _ in writes:
                self.io.observe("write", t0)
            self.verdict(stored, "write")
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        self.counters["written_bytes"] += sum(len(d) for _, d in writes)

    async def _until_free(self, spans: list[tuple[int, int]]) -> None:
        """Return when mutations are not held and no rebuild step covers any of ``spans``
        ((offset, length)); whoever returns from here queues with no await first. Called
        only when either may be so (a write's path: nothing awaited when neither is)."""
        while True:
            await self._running.wait()
            window = self._window
            if window is not None and any(
                off < window[1] and window[0] < off + n for off, n in spans
            ):
                self.counters["window_waits"] += 1
                await self._window_free.wait()
                continue
            if self._running.is_set():
                break

    async def write_checked(
        self, offset: int, data: memoryview, fua: bool, ready: Callable[[], None]
    ) -> None:
        """``write``, with ``ready()`` called right before it is queued, after any wait for
        a hold or a rebuild step and with no await between; if it raises, nothing is
        queued. The encrypting device's ciphertext after its acknowledged tag blocks
        (a FUA write, a repair's write-back: ``frontend/encrypted_tags_first.py``): it
        checks there that no snapshot revert rolled them back meanwhile."""
        self.check_usable()
        if self._window is not None or not self._running.is_set():
            await self._until_free([(offset, len(data))])
        ready()
        await self.write(offset, data, fua)  # queued at once: free just now, nothing awaited

    async def trim_checked(self, offset: int, length: int, ready: Callable[[], None]) -> None:
        """``trim`` with ``ready()`` as in ``write_checked``: the encrypting device's
        release of ciphertext after its acknowledged ZERO tags (``frontend/encrypted_
        zeroes.py``)."""
        self.check_usable()
        if self._window is not None or not self._running.is_set():
            await self._until_free([(offset, length)])
        ready()
        await self.trim(offset, length)

    async def trim(self, offset: int, length: int) -> None:
        raise NotImplementedError

    async def _ordered(
        self, targets: list[ReplicaLink], writes: list[tuple[int, Any]], first: int
    ) -> tuple[int, float]:
        """Queue ``writes`` (generations from ``first``) on every target, back to back;
        -> (the replicas that stored them all, when they were queued)."""
        sent = self._queue_ordered(targets, writes, first)
        started = time.perf_counter()
        await answers([f for _, futs, _ in sent for f in futs], self.settings.replica_timeout)
        return self._judge_ordered(sent, first), started

    def _queue_ordered(
        self, targets: list[ReplicaLink], writes: list[tuple[int, Any]], first: int
    ) -> list[tuple[ReplicaLink, list[asyncio.Future[Reply]], bool]]:
        """``writes`` queued on every target back to back, no await in here: -> per
        target its answers' futures and whether all were queued."""
        sent: list[tuple[ReplicaLink, list[asyncio.Future[Reply]], bool]] = []
        for link in targets:
            futs: list[asyncio.Future[Reply]] = []
            client = link.client
            assert client is not None
            if len(writes) > 1 and getattr(client, "batching", False):
                client.hold_writes()  # one WRITE_BATCH frame for them all
            try:
                for k, (offset, data) in enumerate(writes):
                    futs.append(
                        client.send(Op.WRITE, offset, len(data), data, 0, generation=first + k)
                    )
            except CargoholdError as e:  # lost: what was queued fails with the connection
                self.fanout.refused(link, e)
                sent.append((link, futs, False))
                continue
            sent.append((link, futs, True))
        return sent

    def _judge_ordered(
        self, sent: list[tuple[ReplicaLink, list[asyncio.Future[Reply]], bool]], first: int
    ) -> int:
        """-> how many replicas stored every write (their answers are all in)."""
        stored = 0
        for link, futs, queued in sent:
            # in order: the first failure drops the replica, and it stored no later one
            ok = queued
            for k, fut in enumerate(futs if queued else ()):
                if not self.fanout.judge(link, fut, first + k):
                    ok = False
                    break
            stored += ok
        return stored

    def write_ordered_nowait(
        self,
        writes: list[tuple[int, Any]],
        ready: Callable[[bool], list[tuple[int, Any]]],
        done: Callable[[Exception | None], None],
    ) -> bool:
        """``write_ordered`` without a task (the encrypting device's writes without one):
        if it can start at once, ``ready(True)`` is called before this returns and what it
        gives is queued back to back on every replica of the write set; ``done(None)`` once
        at least ``min_replicas`` stored them all, else ``done(error)``, from the event
        loop, never before this returns. False: nothing was started, ``ready`` was not
        called (held, a rebuild step over any of ``writes``' ranges, fenced, the write set
        too small, or a replica's server does not stop a session at a failed mutation)."""
        window = self._window
        if (
            self.fenced
            or not self._running.is_set()
            or (
                window is not None
                and any(off < window[1] and window[0] < off + len(d) for off, d in writes)
            )
        ):
            return False
        targets = self.write_set()
        if len(targets) < self.settings.min_replicas or not all(
            getattr(link.client, "stop_on_failure", False) for link in targets
        ):
            return False
        writes = ready(True)
        first = self.gen + 1
        self.gen += len(writes)
        self._inflight += 1
        self._idle.clear()
        sent = self._queue_ordered(targets, writes, first)
        t0 = time.perf_counter()

        def finished() -> None:
            stored = self._judge_ordered(sent, first)
            for _ in writes:
                self.io.observe("write", t0)
            self._write_ended(stored, sum(len(d) for _, d in writes), done)

        _AllAnswered(
            [f for _, futs, _ in sent for f in futs],
            self.fanout.deadlines,
            self.settings.replica_timeout,
            finished,
        )
        return True

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
            self.io.observe("write", t0)
            self._write_ended(stored, n, done)

        self.fanout.start(
            targets,
            lambda c: c.send(_WRITE, offset, n, data, flags, generation=gen),
            gen,
            finished,
        )
        return True

    def _write_ended(
        self, stored: int, nbytes: int, done: Callable[[Exception | None], None]
    ) -> None:
        """The end of a write started without a task (either kind above): no longer in
        flight, and ``done`` told whether ``stored`` replicas are enough."""
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
        try:
            self.verdict(stored, "write")
        except CargoholdError as e:
            done(e)
            return
        self.counters["written_bytes"] += nbytes
        done(None)


class _AllAnswered(AllAnswered):
    """Calls ``then()`` once every answer of an ordered write is in (``fanout.AllAnswered``);
    the answers themselves are judged by ``then``."""

    __slots__ = ("then",)

    def __init__(
        self,
        futs: list[asyncio.Future[Reply]],
        deadlines: Deadlines,
        timeout: float,
        then: Callable[[], None],
    ) -> None:
        self.then = then
        super().__init__(futs, deadlines, timeout)

    def finish(self) -> None:
        for fut in self.futs:  # retrieved: those after a replica's first failure are not judged
            if not fut.cancelled():
                fut.exception()
        try:
            self.then()
        except Exception:  # a bug in the caller's callback must not take the loop's caller down
            log.exception("a write's completion failed")
