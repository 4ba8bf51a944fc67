"""The encrypting device's crash rule as a state machine (hypothesis), over the in-memory
twin of the replicated volume (tests/support/memory_volume.py): writes, trims and
write-zeroes, reads, writes whose mutations below stop after any prefix (the engine then
crashes: a new engine, next epoch, over what reached the volume; or it goes on, the
request failed), writes whose tag block and data (queued back to back) reach one of the
two replicas only in part, per replica (then a crash, and the new engine's current
replica either one), interleaved at random, several crashes in a row included.

The model keeps, for every block, the set of contents a read may return: exactly the last
acknowledged content, or for a block of a write that did not complete, that content or the
new one (whichever a read then sees stays). A read returning anything else, or an error,
fails. It found that two writes of one block cut short in a row (crash after the tag
write, before the data: twice) lost the block's acknowledged content (docs/encryption.md,
"Crashes")."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import CargoholdError
from cargohold.frontend.encrypted_device import EncryptedDevice
from tests.support.memory_volume import MemoryVolume

KEY = bytes(range(32))
VID = bytes(range(16))
NBLOCKS = 2 * GROUP  # two groups: writes within one and across both
ZERO = bytes(BLOCK)
# most requests near the groups' boundary, so that they often hit the same blocks
blocks = st.one_of(st.integers(GROUP - 4, GROUP + 3), st.integers(0, NBLOCKS - 1))
counts = st.one_of(st.integers(1, 4), st.integers(1, 70))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def write_through(dev: EncryptedDevice, lo: int, data: bytes, nowait: bool) -> None:
    """A write as the NBD server starts it: without a task when the device can
    (``write_nowait``, answered by a callback: once, after it returned), else awaited."""
    if nowait:
        answers: list[Exception | None] = []
        answered = asyncio.Event()
        returned = False

        def done(err: Exception | None) -> None:
            assert returned and not answers, "answered twice, or before it returned"
            answers.append(err)
            answered.set()

        started = dev.write_nowait(lo * BLOCK, memoryview(data), False, done)
        returned = True
        if started:
            await asyncio.wait_for(answered.wait(), 5)
            if answers[0] is not None:
                raise answers[0]
            return
    await dev.write(lo * BLOCK, memoryview(data), False)


class CrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.logical = layout.logical_size_for(NBLOCKS * BLOCK)
        self.vol = MemoryVolume(layout.physical_size(self.logical), n=2)  # two replicas
        self.epoch = 1
        self.dev = self._device()
        self.may: list[set[bytes]] = [{ZERO} for _ in range(NBLOCKS)]
        self.n = 0

    def _device(self) -> EncryptedDevice:
        return EncryptedDevice(self.vol, BlockCipher(KEY, VID), self.epoch, copies=self.vol)

    def _span(self, lo: int, count: int) -> tuple[int, int]:
        return lo, min(NBLOCKS, lo + count)

    def _content(self, lo: int, hi: int) -> list[bytes]:
        self.n += 1
        return [bytes([self.n % 251 + 1]) * 8 + os.urandom(8) * 511 for _ in range(lo, hi)]

    @rule(lo=blocks, count=counts, nowait=st.booleans())
    def write(self, lo: int, count: int, nowait: bool) -> None:
        lo, hi = self._span(lo, count)
        new = self._content(lo, hi)
        run(write_through(self.dev, lo, b"".join(new), nowait))
        for i in range(lo, hi):
            self.may[i] = {new[i - lo]}

    @rule(lo=blocks, count=counts, trim=st.booleans())
    def zero(self, lo: int, count: int, trim: bool) -> None:
        lo, hi = self._span(lo, count)
        if trim:
            run(self.dev.trim(lo * BLOCK, (hi - lo) * BLOCK))
        else:
            run(self.dev.write_zeroes(lo * BLOCK, (hi - lo) * BLOCK, False))
        for i in range(lo, hi):
            self.may[i] = {ZERO}

    @rule(lo=blocks, count=counts, after=st.integers(0, 4), crash=st.booleans(),
          zeroes=st.booleans(), nowait=st.booleans())  # fmt: skip
    def cut_short(
        self, lo: int, count: int, after: int, crash: bool, zeroes: bool, nowait: bool
    ) -> None:
        """A write (or write-zeroes) whose mutations below stop after ``after`` of them
        (its tag write, or some of its data). ``crash``: the engine dies there, and a new
        one (next epoch) takes over what reached the volume; else the request failed and
        the engine goes on."""
        lo, hi = self._span(lo, count)
        new = [ZERO] * (hi - lo) if zeroes else self._content(lo, hi)
        self.vol.fail_after = len(self.vol.log) + after
        done = True
        try:
            if zeroes:
                run(self.dev.write_zeroes(lo * BLOCK, (hi - lo) * BLOCK, False))
            else:
                run(write_through(self.dev, lo, b"".join(new), nowait))
        except CargoholdError:
            done = False
        finally:
            self.vol.fail_after = None
        for i in range(lo, hi):
            self.may[i] = {new[i - lo]} if done else self.may[i] | {new[i - lo]}
        if crash:
            self.restart()

    @rule(lo=blocks, count=counts, copy=st.integers(0, 1), after=st.integers(0, 3),
          read_from=st.integers(0, 1), nowait=st.booleans())  # fmt: skip
    def cut_on_one_replica(
        self, lo: int, count: int, copy: int, after: int, read_from: int, nowait: bool
    ) -> None:
        """A write whose tag block and data, queued back to back, reach one replica only
        in part (its first ``after`` writes: the tag block and not the data, or nothing),
        the other in full; the engine crashes, and the new one's current replica is
        ``read_from`` (the other rebuilt from it)."""
        lo, hi = self._span(lo, count)
        new = self._content(lo, hi)
        self.vol.cut_copy = (copy, after)
        try:
            run(write_through(self.dev, lo, b"".join(new), nowait))
        except CargoholdError:
            pass
        self.vol.cut_copy = None
        for i in range(lo, hi):
            self.may[i] = self.may[i] | {new[i - lo]}
        for c in self.vol.copies:  # the rebuild from the current replica
            c[:] = self.vol.copies[read_from]
        self.vol.reader = 0
        self.restart()

    @rule()
    def restart(self) -> None:
        """The engine crashes (between requests): a new one, next epoch."""
        self.epoch += 1
        self.dev = self._device()
        assert run(self.dev.check_key()), "the new engine's key check fails"

    @rule(lo=blocks, count=counts)
    def read(self, lo: int, count: int) -> None:
        lo, hi = self._span(lo, count)
        got = run(self.dev.read(lo * BLOCK, (hi - lo) * BLOCK))
        for i in range(lo, hi):
            block = bytes(got[(i - lo) * BLOCK : (i - lo + 1) * BLOCK])
            assert block in self.may[i], (
                f"block {i}: neither its acknowledged content nor a cut-short write's"
            )
            self.may[i] = {block}  # what a read saw stays

    @invariant()
    def nothing_refused(self) -> None:
        assert not self.dev.wrong_key, self.dev.wrong_key


CrashMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_crashes_leave_every_block_old_or_new = CrashMachine.TestCase


def test_two_cut_short_writes_of_a_block_in_a_row_keep_its_acknowledged_content() -> None:
    """The case the machine found, by hand: A acknowledged; B cut short after its tag
    write (crash); C cut short after its tag write (crash): the block still reads A."""
    vol = MemoryVolume(layout.physical_size(layout.logical_size_for(GROUP * BLOCK)))

    def crash(epoch: int) -> EncryptedDevice:
        return EncryptedDevice(vol, BlockCipher(KEY, VID), epoch, copies=vol)

    a = b"A" * BLOCK
    dev = crash(1)
    run(dev.write(0, memoryview(a), False))
    for epoch, content in ((2, b"B"), (3, b"C")):
        vol.fail_after = len(vol.log) + 1  # the tag block reaches the replicas, no data
        try:
            run(dev.write(0, memoryview(content * BLOCK), False))
        except CargoholdError:
            pass
        vol.fail_after = None
        dev = crash(epoch)
        assert run(dev.check_key())
        assert run(dev.read(0, BLOCK)) == a
    assert dev.counters["unwritten_slots_cleared"] == 0  # a read changes no slot
    run(dev.write(0, memoryview(b"D" * BLOCK), False))
    assert dev.counters["unwritten_slots_cleared"] == 1
    assert run(crash(4).read(0, BLOCK)) == b"D" * BLOCK
