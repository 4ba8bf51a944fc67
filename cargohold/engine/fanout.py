"""The write fan-out: one mutation sent to every replica of a volume's write set, all the
answers collected, the replicas that failed dropped, ``min_replicas`` enforced. Called by
``volume`` for writes, trims, write-zeroes and flushes (longhorn-engine's MultiWriterAt is
the model).

- **Send** (``FanOut.send``): the request is queued on every target's connection without
  an ``await`` in between, so every replica gets the mutations in the same order; a target
  whose connection is already lost is dropped at once.
- **Collect**: one timer for all the answers (``answers``: no Task per replica); an answer
  still missing after ``replica_timeout`` seconds is a TimeoutError. ``FanOut.start`` does
  the same without a task at all: a callback on each answer counts them down, and the last
  one (or the timer) judges them all and calls the caller back (the NBD frontend's aligned
  writes: no Task, no coroutine chain per request). Those share their timers: the
  mutations started within one slice of ``replica_timeout`` / 64 have one timer for all
  (``Deadlines``), so a missing answer fails between ``replica_timeout`` and 1/64 more
  after its request was queued (uvloop's ``call_later`` and ``cancel`` per write cost more
  than the rest of the bookkeeping of its answers).
- **Judge** each answer: a replica that errs, times out or answers with a generation other
  than the one the engine handed out (it missed a mutation: a gap) is dropped (ERR) and
  counted (``replica_errors``, once per replica lost: ``lost``); an answer that cannot be
  judged is a failed one (``judge`` never raises, so every caller is answered); one
  that says a newer engine owns it (Fenced) is dropped
  and the reason handed to ``fenced`` (the volume makes it its own). A replica
  that stored it has its generation moved forward, never back (a FLUSH answer can overtake
  later writes' answers).
- **Enforce** (``FanOut.require``): fewer than ``min_replicas`` replicas stored it ->
  ReplicaIOError (EIO to the NBD client): the engine never acknowledges what it did not
  store (invariant 1). ``FanOut.enough`` checks the same before a generation is handed out.

Nothing here knows the volume: the targets, the request and its generation come in, the
number of replicas that stored it goes out, so the unit tests drive it with in-memory
replica links. (It is on the write path of every request: no objects beyond a tuple are
made per mutation.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import CargoholdError, Fenced, ReplicaIOError
from cargohold.protocol.replica_wire import Reply
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings

log = logging.getLogger("cargohold.engine")
_RW = Mode.RW  # judged per write per replica: an enum member's lookup costs 5x a global's
_FENCED = Fenced.status

Send = Callable[[ReplicaClient], "asyncio.Future[Reply]"]


class FanOut:
    """Fans mutations out to a write set for volume ``volume`` (its name, for messages).
    ``settings`` is read at each call (``min_replicas``, ``replica_timeout``); failures
    are counted in ``counters`` (the volume's); ``fenced(reason)`` is called when a
    replica says a newer engine owns it."""

    def __init__(
        self,
        volume: str,
        settings: EngineSettings,
        counters: collections.Counter[str],
        fenced: Callable[[str], None],
    ) -> None:
        self.volume = volume
        self.settings = settings
        self.counters = counters
        self.fenced = fenced
        self.deadlines = Deadlines()  # the answers' timers (also write_callbacks.py's)

    def enough(self, targets: list[ReplicaLink]) -> None:
        """Raise ReplicaIOError if the write set is too small to store anything."""
        if len(targets) < self.settings.min_replicas:
            raise ReplicaIOError(
                f"volume {self.volume}: {len(targets)} replicas in the write set, "
                f"{self.settings.min_replicas} needed"
            )

    async def send(self, targets: list[ReplicaLink], send: Send, gen: int) -> tuple[int, float]:
        """Send one request (``send(client)``) to each target, await every answer and judge
        each one (module doc). ``gen``: the generation the request carries (0: none, a
        FLUSH). -> (how many replicas stored it, ``time.perf_counter()`` once every request
        was queued). Never raises for a replica's failure: ``require`` judges the count."""
        sent = self._queue(targets, send)
        started = time.perf_counter()
        await answers([f for _, f in sent], self.settings.replica_timeout)
        stored = 0
        for link, fut in sent:
            stored += self.judge(link, fut, gen)
        return stored, started

    def start(
        self,
        targets: list[ReplicaLink],
        send: Send,
        gen: int,
        done: Callable[[int, float], None],
    ) -> None:
        """``send`` without a task: the request is queued on every target as ``send`` does,
        and ``done(stored, started)`` is called from the event loop once every answer is in
        (or timed out) and judged. ``done`` never runs before this returns."""
        _Collect(self, self._queue(targets, send), gen, done, time.perf_counter())

    def _queue(
        self, targets: list[ReplicaLink], send: Send
    ) -> list[tuple[ReplicaLink, asyncio.Future[Reply]]]:
        """The request queued on every target (a target that refuses it at once is
        dropped): no await in here, so every replica gets the requests in the same order."""
        sent = []
        for link in targets:
            assert link.client is not None
            try:
                sent.append((link, send(link.client)))
            except CargoholdError as e:
                self.refused(link, e)
        return sent

    def refused(self, link: ReplicaLink, e: CargoholdError) -> None:
        """A replica whose connection refused a request at once (it was lost while no
        request was in flight to fail with it) is dropped and counted like one whose
        answer failed: one ``replica_errors`` per replica lost, either way."""
        self.lost(link, str(e))

    def lost(self, link: ReplicaLink, why: str) -> None:
        """Drop a replica that failed, timed out or missed a mutation, and count it: once
        per replica lost, however many of its answers show it (every write of a batch a
        failure cut short, every write in flight on a lost connection)."""
        if link.client is None:  # dropped already, and counted then
            return
        link.drop(why)
        self.counters["replica_errors"] += 1
        log.warning("volume %s: replica %s dropped: %s", self.volume, link.spec, link.error)

    def require(self, stored: int, what: str) -> None:
        """Raise ReplicaIOError unless at least ``min_replicas`` replicas stored it."""
        if stored < self.settings.min_replicas:
            raise ReplicaIOError(
                f"volume {self.volume}: {what} done on {stored} replicas, "
                f"{self.settings.min_replicas} needed"
            )

    def judge(self, link: ReplicaLink, fut: asyncio.Future[Reply], gen: int) -> bool:
        """One replica's answer (``fut`` is done): True if it stored it, else it is
        dropped. Never raises: an answer that cannot be judged is a failed one (a
        write's caller is answered whatever a replica sent)."""
        client = link.client
        try:
            reply = fut.result()
            if client is None:  # dropped since it was sent: out of the write set
                if reply.status == _FENCED:  # still the news that a newer engine owns it
                    self.fenced(f"a newer engine owns replica {link.spec}")
                return False
            client.check(reply)
        except Fenced as e:
            self.fenced(f"a newer engine owns replica {link.spec}: {e}")
            link.drop(str(e))
            return False
        except (Exception, asyncio.CancelledError) as e:  # an error, no answer, a bad one
            self.lost(link, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            return False
        if gen and link.mode is _RW and reply.generation != gen:
            self.lost(link, f"missed a mutation: generation {reply.generation}, expected {gen}")
            return False
        # a FLUSH reply can overtake later writes' replies: never go backwards
        link.generation = max(link.generation, reply.generation)
        return True


class AllAnswered:
    """A wait for the answers of one mutation without a task: ``finish()`` is called from
    the event loop once every future in ``futs`` is done (those still pending after
    ``timeout`` seconds, at most 1/64 more, failed with TimeoutError by their cohort's timer:
    ``Deadlines``), never before the wait is made. Like ``answers`` it waits for one missing
    answer at a time (a callback on it), then looks at the rest: the replies of several
    replicas usually arrive in one pass, so a mutation costs one callback, not one per
    answer. Subclasses say what ``finish`` does."""

    __slots__ = ("cohort", "futs")

    def __init__(
        self, futs: list[asyncio.Future[Reply]], deadlines: Deadlines, timeout: float
    ) -> None:
        self.futs = futs
        self.cohort: set[Expiring] | None = None  # the cohort whose timer expires it
        # the answers' loop, not ``get_running_loop()``: that costs a getpid() system call
        loop = futs[0].get_loop() if futs else asyncio.get_running_loop()
        for fut in futs:
            if not fut.done():
                self.cohort = deadlines.watch(self, loop, timeout)
                fut.add_done_callback(self._answered)
                return
        loop.call_soon(self._ended)  # nothing to wait for (or nothing sent)

    def _answered(self, _: asyncio.Future[Reply]) -> None:
        for fut in self.futs:
            if not fut.done():
                fut.add_done_callback(self._answered)
                return
        self._ended()

    def expire(self) -> None:
        self._leave()
        for fut in self.futs:
            if not fut.done():
                fut.set_exception(TimeoutError())

    def _leave(self) -> None:
        if self.cohort is not None:
            self.cohort.discard(self)
            self.cohort = None

    def _ended(self) -> None:
        self._leave()
        self.finish()

    def finish(self) -> None:
        raise NotImplementedError


class _Collect(AllAnswered):
    """The answers of one ``FanOut.start``: when all are in (or the timeout failed those
    still missing) it judges them and calls ``done``."""

    __slots__ = ("done", "fanout", "gen", "sent", "started")

    def __init__(
        self,
        fanout: FanOut,
        sent: list[tuple[ReplicaLink, asyncio.Future[Reply]]],
        gen: int,
        done: Callable[[int, float], None],
        started: float,
    ) -> None:
        self.fanout, self.sent, self.gen, self.done, self.started = fanout, sent, gen, done, started
        super().__init__(
            [fut for _, fut in sent], fanout.deadlines, fanout.settings.replica_timeout
        )

    def finish(self) -> None:
        stored = 0
        for link, fut in self.sent:
            stored += self.fanout.judge(link, fut, self.gen)
        try:
            self.done(stored, self.started)
        except Exception:  # a bug in the caller's callback must not take the loop's caller down
            log.exception("volume %s: a mutation's completion failed", self.fanout.volume)


class Expiring(Protocol):
    """What ``Deadlines`` watches: a wait for answers that fails those still missing when
    told to (``expire``), and leaves its cohort itself when it ends first."""

    def expire(self) -> None: ...


class Deadlines:
    """The timers of the writes started without a task (``FanOut.start``'s collections,
    ``write_callbacks.py``'s ordered writes): those started within one slice of time
    (``timeout`` / 64) form a cohort with one timer, set when the slice opens to fire
    ``timeout`` after the slice ends; it expires the members still waiting. A wait leaves
    its cohort when it finishes, so the cohort holds only the waiting ones (nothing of a
    finished write is kept until the timer fires)."""

    __slots__ = ("cohort", "ends")

    def __init__(self) -> None:
        self.cohort: set[Expiring] = set()
        self.ends = 0.0  # loop time: the current cohort takes no member from then on

    def watch(self, c: Expiring, loop: asyncio.AbstractEventLoop, timeout: float) -> set[Expiring]:
        """Put ``c`` in the current cohort (a new one if its slice is over): -> the cohort."""
        now = loop.time()
        if now >= self.ends:
            self.cohort = set()
            self.ends = now + timeout / 64
            loop.call_at(self.ends + timeout, _expire_cohort, self.cohort)
        self.cohort.add(c)
        return self.cohort


def _expire_cohort(cohort: set[Expiring]) -> None:
    for c in list(cohort):
        c.expire()


async def answers(futs: list[asyncio.Future[Reply]], timeout: float) -> None:
    """Wait until every future is done; those still pending after ``timeout`` seconds fail
    with TimeoutError. One timer for all of them and no Task per replica: the caller's task
    awaits each future itself (the replies of several replicas usually arrive together, so
    it wakes once)."""
    if all(f.done() for f in futs):
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, futs)
    try:
        for f in futs:
            if not f.done():
                with contextlib.suppress(Exception):  # looked at by the caller
                    await f
    finally:
        timer.cancel()
        for f in futs:  # we were cancelled: nobody waits for these answers any more
            if not f.done():
                f.cancel()


def _expire(futs: list[asyncio.Future[Reply]]) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(TimeoutError())
