"""The encrypting device's writes in flight together, as a state machine (hypothesis):
writes without a task (``write_nowait``, falling back to the task path as the NBD server
does), awaited writes, FUA writes, trims and write-zeroes, 1 block to 2 MiB, unaligned to
groups, overlapping, adjacent and group-straddling, started while earlier ones are still
queued; the volume below holds writes (a hold) and answers the queued writes one by one
in the order they were queued, as a replica's connection applies them, a chosen one
failing after any prefix of its writes (then every later one queued on the session fails
too, until the session is empty: a server that stops a session at a failed mutation);
the tag cache is 4 blocks (8 groups written); engine restarts between, and crashes
with writes held, queued and partly delivered (merged tag-block writes among them);
snapshots and reverts to them with writes in flight, as the engine runs them (a hold:
what is queued is delivered first, new mutations wait; then the layout version bumps).

Checked at every step, not only at the end:

- **claims**: a block is never owned by two writes at once, and every claim is released
  exactly once (``CheckedClaims``, against a dict per block);
- **the tag cache**: no tag block leaves the cache while a write of it is in flight or
  queued, a write has put a change into it, or a write claims a block of its group
  (``CheckedCache``);
- **nonces**: no (salt, version, block) is sealed twice, data or ZERO tag (``record``);
- **snapshots**: the bytes a queued write holds do not change before the volume applies
  them (a later write's tags put into the same tag block);
- **answers**: each write without a task is answered exactly once, never before the call
  that started it returned;
- **content**: a read during the writes returns, for each block, its content or that of
  a write in flight over it; once everything is answered, every block reads (on this engine and on a
  new one) its last acknowledged content, or for a block of a write that failed, that or
  the failed write's (whichever a read then sees stays); after a revert, the snapshot's
  content or that of a write acknowledged after the revert, never an error.

Both cipher paths (tests/support/cipher_paths.py)."""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import CargoholdError, ReplicaIOError
from cargohold.frontend.encrypted_claims import Claims
from cargohold.frontend.encrypted_device import EncryptedDevice
from tests.support.memory_volume import MemoryVolume

KEY = bytes(range(32))
VID = bytes(range(16))
GROUPS = 8 + 1  # 8 full groups and the start of a ninth: a 2 MiB write straddles 9
NBLOCKS = GROUPS * GROUP
ZERO = bytes(BLOCK)
CACHE = 4  # tag blocks cached: fewer than the groups written

starts = st.one_of(
    st.integers(GROUP - 3, GROUP + 2),  # around a group's boundary
    st.integers(0, NBLOCKS - 1),
)
counts = st.one_of(st.integers(1, 3), st.integers(1, 2 * GROUP + 2), st.just(512))


class CheckedClaims(Claims):
    """``Claims`` held to a dict per block: never two owners, each release once."""

    __slots__ = ("owners",)

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[int, int] = {}  # block -> id of its claim's future

    def take(self, lo: int, hi: int, fut: asyncio.Future[None]) -> None:
        for b in range(lo, hi):
            assert b not in self.owners, f"block {b} claimed by two writes at once"
            self.owners[b] = id(fut)
        super().take(lo, hi, fut)

    def release(self, lo: int, hi: int) -> asyncio.Future[None] | None:
        fut = super().release(lo, hi)
        assert fut is not None, f"blocks [{lo}, {hi}) released but not claimed (twice?)"
        assert not fut.done(), "a claim's future set twice"
        for b in range(lo, hi):
            assert self.owners.pop(b) == id(fut)
        return fut


class CheckedCache(collections.OrderedDict):  # type: ignore[type-arg]
    """The device's tag cache: a tag block leaves it only when nothing of it is pending."""

    claims: CheckedClaims

    def __delitem__(self, g: int) -> None:
        t = self[g]
        assert not t.writing, f"tag block {g} dropped with a write of it in flight"
        assert not self.claims.group_claimed(g), f"tag block {g} dropped while claimed"
        assert t.stale or t.applied == t.written, f"tag block {g} dropped with changes"
        super().__delitem__(g)

    def clear(self) -> None:
        """A revert drops every copy, those with changes pending too (their writes start
        over), never one with a write of it in flight (the engine's hold answered those
        before it reverted)."""
        for g, t in self.items():
            assert not t.writing, f"tag block {g} dropped by a revert with a write in flight"
        super().clear()


class Session(MemoryVolume):
    """One replica behind one ordered connection: every mutation is queued and applied,
    in order, when the test delivers it (``deliver``); reads see what was applied."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.queue: collections.deque[Any] = collections.deque()
        self.held = False
        self.unheld = asyncio.Event()
        self.unheld.set()
        self.fail_next: int | None = None  # the next delivery fails after this many writes
        self.stopped = False  # a delivery failed: the rest queued fail too
        self.layout = 0  # bumped by a revert (``Volume.local.layout``)

    def hold(self, on: bool) -> None:
        self.held = on
        (self.unheld.clear if on else self.unheld.set)()

    def _queue(self, writes: list[tuple[int, Any]], done: Any) -> None:
        snap = [bytes(d) for _, d in writes]  # what was queued, to compare when applied
        self.queue.append((writes, snap, done))

    def deliver(self) -> None:
        """The oldest queued mutation applied (all of it, a prefix, or nothing: a session
        stopped) and answered."""
        writes, snap, done = self.queue.popleft()
        fail, self.fail_next = self.fail_next, None
        if self.stopped:
            fail = 0
        error = None
        for n, (offset, data) in enumerate(writes):
            assert bytes(data) == snap[n], "a queued write's bytes changed before it was sent"
            if fail is not None and n >= fail:
                self.stopped = True
                error = ReplicaIOError(f"session: refused after {fail}")
                break
            self.log.append(("write", offset, bytes(data)))
            self.copies[0][offset : offset + len(data)] = data
        if error is None and fail is not None:
            self.stopped = True
            error = ReplicaIOError(f"session: lost after {fail}")
        if not self.queue:
            self.stopped = False  # reopened
        done(error)

    async def _wait(self, writes: list[tuple[int, Any]]) -> None:
        fut = asyncio.get_running_loop().create_future()

        def done(error: Exception | None) -> None:
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

        self._queue(writes, done)
        await fut

    async def write_ordered(self, writes: list[tuple[int, Any]], ready: Any = None) -> None:
        self.ordered_calls += 1
        await self.unheld.wait()
        if ready is not None:
            writes = ready(True)
        await self._wait(writes)

    def write_ordered_nowait(self, writes: list[tuple[int, Any]], ready: Any, done: Any) -> bool:
        if self.held:
            return False
        self.nowait_calls += 1
        loop = asyncio.get_running_loop()
        self._queue(ready(True), lambda error: loop.call_soon(done, error))
        return True

    async def write(self, offset: int, data: Any, fua: bool) -> None:
        await self.unheld.wait()  # a hold holds every mutation
        await self._wait([(offset, data)])

    async def trim(self, offset: int, length: int) -> None:
        await self.unheld.wait()
        await self._wait([(offset, bytes(length))])

    async def write_checked(self, offset: int, data: Any, fua: bool, ready: Any) -> None:
        await self.unheld.wait()
        ready()  # may raise: nothing queued
        await self._wait([(offset, data)])

    async def trim_checked(self, offset: int, length: int, ready: Any) -> None:
        await self.unheld.wait()
        ready()  # may raise: nothing queued
        await self._wait([(offset, bytes(length))])

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self.trim(offset, length)


def record(cipher: BlockCipher, sealed: set[tuple[bytes, int, int]]) -> None:
    """Every (salt, version, block) ``cipher`` seals (data or ZERO tag) into ``sealed``,
    failing on a repeat."""
    seal_into, zero_tag = cipher.seal_into, cipher.zero_tag

    def note(first: int, n: int, version: int) -> None:
        for i in range(first, first + n):
            at = (cipher.salt, version, i)
            assert at not in sealed, f"nonce reused: block {i} at version {version:#x}"
            sealed.add(at)

    def checked_seal_into(first: int, version: int, plaintext: Any, *args: Any) -> bytes:
        note(first, len(memoryview(plaintext).cast("B")) // BLOCK, version)
        return seal_into(first, version, plaintext, *args)

    def checked_zero_tag(index: int, version: int) -> bytes:
        note(index, 1, version)
        return zero_tag(index, version)

    cipher.seal_into = checked_seal_into  # type: ignore[method-assign]
    cipher.zero_tag = checked_zero_tag  # type: ignore[method-assign]


class WritesInFlight(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.vol = Session(layout.physical_size(layout.logical_size_for(NBLOCKS * BLOCK)))
        self.vol.unheld = asyncio.Event()  # of this loop (3.10+: bound when first used)
        self.vol.unheld.set()
        self.epoch = 0
        self.sealed: set[tuple[bytes, int, int]] = set()
        self.may: list[set[bytes]] = [{ZERO} for _ in range(NBLOCKS)]
        self.jobs: list[tuple[Any, int, int, list[bytes]]] = []  # (task or answers, lo, hi, new)
        self.n = 0
        self.snap: bytes | None = None  # the snapshot's copy, and what each block may read
        self.snap_may: list[set[bytes]] = []
        self.restart_engine()

    def teardown(self) -> None:
        self.loop.close()

    def restart_engine(self) -> None:
        self.epoch += 1
        vol = self.vol
        d = EncryptedDevice(
            vol,
            BlockCipher(KEY, VID),
            self.epoch,
            cache_blocks=CACHE,
            layout_version=lambda: vol.layout,
        )
        d._claimed = claims = CheckedClaims()
        cache = CheckedCache()
        cache.claims = claims
        d._cache = cache
        record(d.cipher, self.sealed)
        self.dev = d

    def turn(self, n: int = 3) -> None:
        for _ in range(n):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _span(self, lo: int, count: int) -> tuple[int, int]:
        return lo, min(NBLOCKS, lo + count)

    @rule(lo=starts, count=counts, how=st.sampled_from(["nowait", "task", "fua"]))
    def write(self, lo: int, count: int, how: str) -> None:
        lo, hi = self._span(lo, count)
        self.n += 1
        new = [bytes([self.n % 251 + 1]) * 8 + os.urandom(8) * 511 for _ in range(lo, hi)]
        data = memoryview(b"".join(new))
        if how == "nowait":
            answers: list[Exception | None] = []
            returned = [False]

            def done(err: Exception | None) -> None:
                assert returned[0], "answered before write_nowait returned"
                answers.append(err)

            async def start() -> bool:  # as the NBD server calls it: on the loop
                started = self.dev.write_nowait(lo * BLOCK, data, False, done)
                returned[0] = True
                return started

            started = self.loop.run_until_complete(start())
            if started:
                self.jobs.append((answers, lo, hi, new))
                return
            assert not answers
        job = self.loop.create_task(self.dev.write(lo * BLOCK, data, how == "fua"))
        self.jobs.append((job, lo, hi, new))

    @rule(lo=starts, count=counts, trim=st.booleans())
    def zero(self, lo: int, count: int, trim: bool) -> None:
        lo, hi = self._span(lo, count)
        d = self.dev
        coro = (
            d.trim(lo * BLOCK, (hi - lo) * BLOCK)
            if trim
            else d.write_zeroes(lo * BLOCK, (hi - lo) * BLOCK, False)
        )
        self.jobs.append((self.loop.create_task(coro), lo, hi, [ZERO] * (hi - lo)))

    @rule(on=st.booleans())
    def hold(self, on: bool) -> None:
        self.vol.hold(on)
        self.turn()

    @rule(after=st.integers(0, 2))
    def fail_next(self, after: int) -> None:
        self.vol.fail_next = after

    @precondition(lambda self: self.vol.queue)
    @rule(n=st.integers(1, 4))
    def deliver(self, n: int) -> None:
        for _ in range(n):
            if self.vol.queue:
                self.vol.deliver()
            self.turn()
        self._reap()

    @rule()
    def let_run(self) -> None:
        self.turn(5)
        self._reap()

    def _reap(self) -> None:
        """The model of the writes that ended: acknowledged, their content; failed, the
        old or theirs. Writes in flight together over the same block have no order (the
        device only keeps them from running at once: whichever takes the claim first is
        overwritten by the other), so when several acknowledged writes of a block end in
        the same pass the block may hold any of them."""
        left = []
        acked: dict[int, set[bytes]] = {}
        failed: list[tuple[int, bytes]] = []
        for job, lo, hi, new in self.jobs:
            if isinstance(job, list):
                if not job:
                    left.append((job, lo, hi, new))
                    continue
                assert len(job) == 1, "a write without a task answered twice"
                error = job[0]
            else:
                if not job.done():
                    left.append((job, lo, hi, new))
                    continue
                error = job.exception()
                assert error is None or isinstance(error, CargoholdError), repr(error)
            for i in range(lo, hi):
                if error is None:
                    acked.setdefault(i, set()).add(new[i - lo])
                else:
                    failed.append((i, new[i - lo]))
        for i, values in acked.items():
            self.may[i] = values
        for i, value in failed:
            self.may[i] = self.may[i] | {value}
        self.jobs = left

    def _settle(self) -> None:
        """Everything queued delivered and every write answered."""
        self.vol.hold(False)
        self._deliver_until_idle(100, done=lambda: not (self.jobs or self.vol.queue))
        assert not self.jobs, "a write never answered"
        assert not self.dev._claimed and not self.dev._claimed.owners, "claims left over"

    def _read_all(self, dev: EncryptedDevice) -> None:
        got = self.loop.run_until_complete(dev.read(0, NBLOCKS * BLOCK))
        for i in range(NBLOCKS):
            block = bytes(got[i * BLOCK : (i + 1) * BLOCK])
            assert block in self.may[i], f"block {i}: neither acknowledged nor a failed write's"
            self.may[i] = {block}  # what a read saw stays

    @rule()
    def settle_and_read(self) -> None:
        self._settle()
        self._read_all(self.dev)

    def _flying(self) -> dict[int, set[bytes]]:
        """For each block, the content of the writes in flight over it."""
        flying: dict[int, set[bytes]] = collections.defaultdict(set)
        for _, a, b, new in self.jobs:
            for i in range(a, b):
                flying[i].add(new[i - a])
        return flying

    def _drain(self) -> None:
        """The engine's hold: new mutations wait, those queued are answered."""
        self.vol.hold(True)
        self._deliver_until_idle(5)

    def _deliver_until_idle(self, turns: int, done: Any = lambda: False) -> None:
        """Deliver what is queued, a loop turn at a time, until ``done()`` or ``turns``
        turns in a row found nothing queued."""
        idle = 0  # loop turns with nothing queued
        while idle < turns and not done():
            self.turn()
            if self.vol.queue:
                idle = 0
                self.vol.deliver()
            else:
                idle += 1
            self._reap()

    @rule()
    def snapshot(self) -> None:
        """A snapshot (inside a hold): each block holds its content or that of a write in
        flight over it (a FUA write's tag block may be in it, its data not)."""
        held = self.vol.held
        self._drain()
        self.snap = bytes(self.vol.copies[0])
        flying = self._flying()
        self.snap_may = [self.may[i] | flying[i] for i in range(NBLOCKS)]
        self.vol.hold(held)

    @precondition(lambda self: self.snap is not None)
    @rule()
    def revert(self) -> None:
        """A revert to the snapshot (inside a hold), with writes in flight (held, or
        between their tag block and their data): every block then reads the snapshot's
        content, or, under a write in flight, that or the write's (once acknowledged:
        the write's)."""
        assert self.snap is not None
        held = self.vol.held
        self._drain()
        self.vol.copies[0][:] = self.snap
        self.vol.layout += 1
        flying = self._flying()
        self.may = [self.snap_may[i] | flying[i] for i in range(NBLOCKS)]
        self.vol.hold(held)

    @rule()
    def restart(self) -> None:
        """Between requests, the engine restarts (next epoch, a new salt)."""
        self._settle()
        self.restart_engine()
        assert self.loop.run_until_complete(self.dev.check_key())
        self._read_all(self.dev)

    @rule(lo=starts, count=counts)
    def read(self, lo: int, count: int) -> None:
        """A read while writes are in flight (tag blocks loaded, others evicted): a block
        no write in flight covers reads its content; one that a write covers, that or the
        write's (never an error)."""
        lo, hi = self._span(lo, count)
        flying: dict[int, set[bytes]] = collections.defaultdict(set)
        for _, a, b, new in self.jobs:
            for i in range(max(a, lo), min(b, hi)):
                flying[i].add(new[i - a])
        got = self.loop.run_until_complete(self.dev.read(lo * BLOCK, (hi - lo) * BLOCK))
        for i in range(lo, hi):
            block = bytes(got[(i - lo) * BLOCK : (i - lo + 1) * BLOCK])
            assert block in self.may[i] | flying[i], f"block {i} read during writes"
            if i not in flying:
                self.may[i] = {block}

    @rule()
    def crash(self) -> None:
        """The engine dies with writes in flight (held, queued, some delivered): what was
        not delivered never reaches the replica; a new engine (next epoch) reads each
        block of those writes old or new."""
        self.vol.queue.clear()
        self.vol.stopped = False
        for job, lo, hi, new in self.jobs:
            if not isinstance(job, list):
                job.cancel()
            for i in range(lo, hi):
                self.may[i] = self.may[i] | {new[i - lo]}
        self.jobs = []
        self.turn()  # the old engine's tasks end
        self.vol.hold(False)
        self.restart_engine()
        assert self.loop.run_until_complete(self.dev.check_key())
        self._read_all(self.dev)

    @invariant()
    def nothing_refused(self) -> None:
        assert not self.dev.wrong_key, self.dev.wrong_key

    def check_end(self) -> None:
        self._settle()
        self._read_all(self.dev)


class WritesInFlightTest(WritesInFlight):
    def teardown(self) -> None:
        try:
            self.check_end()
        finally:
            self.loop.close()


def test_writes_in_flight_together(cipher_path: str) -> None:
    run_state_machine_as_test(
        WritesInFlightTest,
        settings=settings(
            max_examples=int(os.environ.get("CARGOHOLD_MACHINE_EXAMPLES", "40")),
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_overlapping_writes_in_flight_end_in_either_order(cipher_path: str) -> None:
    """Found by the machine: two writes over block 479 in flight together (the second
    started before the first was answered), both answered in the same pass, and the block
    held the first one's bytes. Either is right (they have no order); the model once said
    only the later one was."""
    s = WritesInFlightTest()
    s.write(count=1, how="nowait", lo=61)
    s.write(count=1, how="task", lo=61)
    s.write(count=512, how="nowait", lo=61)
    s.deliver(n=1)
    s.write(count=512, how="nowait", lo=61)
    s.write(count=1, how="nowait", lo=479)
    s.deliver(n=1)
    s.deliver(n=3)
    s.nothing_refused()
    s.teardown()


def test_a_crash_after_a_revert_that_followed_a_fua_write(cipher_path: str) -> None:
    """Found by the machine: the FUA write's tag blocks are delivered in the revert's
    hold (then rolled back by it), its data after it; a crash before its tags were
    written again left the blocks of its partial groups (61-63, 512-572) failing
    authentication. Its data is now queued only onto the tag blocks it acknowledged
    (``test_encrypted_revert.py``: ``test_no_data_is_queued_onto_tag_blocks_a_revert_...``).
    Neither the read nor the second write is needed (nor a 512-block write); the
    second snapshot's hold delivers the data and holds the tags written again."""
    s = WritesInFlightTest()
    s.write(count=512, how="fua", lo=61)
    s.snapshot()
    s.read(count=1, lo=61)
    s.write(count=1, how="nowait", lo=61)
    s.revert()
    s.snapshot()
    s.crash()
    s.teardown()


def test_a_crash_after_a_revert_that_came_between_a_trims_tags_and_its_trim(
    cipher_path: str,
) -> None:
    """Found when looking for the FUA write's twin (above): block 61 written twice (both
    slots live), a TRIM of it whose ZERO tag block is delivered in the revert's hold (then
    rolled back by it) and whose trim came after it; a crash before the tag block went
    again left zeros under the snapshot's two data slots: block 61 (and the key check of
    group 0) failed authentication. The trim is now queued only onto the tag block it
    acknowledged."""
    s = WritesInFlightTest()
    for _ in range(2):
        s.write(count=1, how="task", lo=61)
        s.settle_and_read()
    s.snapshot()
    s.zero(lo=61, count=1, trim=True)
    s.snapshot()  # its hold: the ZERO tag block waits
    s.revert()  # delivered in the revert's hold, then rolled back
    s.snapshot()  # the trim delivered here (before the fix), the tags again held
    s.crash()
    s.teardown()
