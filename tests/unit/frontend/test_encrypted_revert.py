"""A snapshot revert with the encrypting device's writes in flight. The engine reverts
inside a hold (``engine/snapshots.py``: new mutations wait, those in flight are answered,
every replica reverts, the layout version is bumped, mutations resume), so no write is
*queued* across a revert; but a write may be between its claim and its queueing (its tag
load, its settling read, waiting for the hold), or between its tag block and its data
when they are two requests (FUA, TRIM and WRITE_ZEROES, an older replica server).

The rule: after a revert, every block reads as the snapshot's content or a write
acknowledged after it; none fails authentication; no (key, nonce) is sealed twice.

Over the in-memory twin of the replicated volume (``tests/support/memory_volume.py``) with
a snapshot, a revert and gates where the test stops a request (``RevertVolume``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK
from cargohold.frontend.encrypted_device import EncryptedDevice
from tests.support.done_recorder import Done
from tests.support.memory_volume import MemoryVolume

KEY = bytes(range(32))
VID = bytes(range(16))
LOGICAL = 2 * layout.GROUP_BYTES
A, B = 1, 2  # two blocks of group 0


class RevertVolume(MemoryVolume):
    """``snapshot`` and ``revert`` (every copy back to the snapshot, ``layout`` bumped, as
    ``Volume.local.layout`` is), and gates: a request named in ``gates`` waits there until
    the test opens it (``stopped[name]`` is set once one waits). ``held``: mutations wait,
    as under the engine's hold (``write_ordered_nowait`` starts nothing)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.layout = 0
        self.snap: list[bytes] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.stopped: dict[str, asyncio.Event] = {}
        self.unheld = asyncio.Event()
        self.unheld.set()

    def gate(self, name: str) -> None:
        self.gates[name] = asyncio.Event()
        self.stopped[name] = asyncio.Event()

    def open(self, name: str) -> None:
        self.gates.pop(name).set()

    async def _at(self, name: str) -> None:
        gate = self.gates.get(name)
        if gate is not None:
            self.stopped[name].set()
            await gate.wait()

    def hold(self, on: bool) -> None:
        self.held = on
        (self.unheld.clear if on else self.unheld.set)()

    def snapshot(self) -> None:
        self.snap = [bytes(c) for c in self.copies]

    def revert(self) -> None:
        """Inside a hold: nothing in flight (the writes here apply at once)."""
        for c, s in zip(self.copies, self.snap, strict=True):
            c[:] = s
        self.layout += 1

    async def read(self, offset: int, length: int) -> bytes:
        data = await super().read(offset, length)  # read now, answered after the gate
        await self._at(f"read {offset // BLOCK}")  # the physical block
        return data

    async def write_ordered(self, writes: list[tuple[int, Any]], ready: Any = None) -> None:
        await self.unheld.wait()
        await super().write_ordered(writes, ready)

    async def write(self, offset: int, data: Any, fua: bool) -> None:
        await self._at("write")
        await self.unheld.wait()
        await super().write(offset, data, fua)

    async def trim(self, offset: int, length: int) -> None:
        await self._at("trim")
        await self.unheld.wait()
        await super().trim(offset, length)

    async def write_checked(self, offset: int, data: Any, fua: bool, ready: Any) -> None:
        await self._at("write")
        await self.unheld.wait()
        ready()  # may raise: nothing queued
        await MemoryVolume.write(self, offset, data, fua)

    async def trim_checked(self, offset: int, length: int, ready: Any) -> None:
        await self._at("trim")
        await self.unheld.wait()
        ready()  # may raise: nothing queued
        await MemoryVolume.trim(self, offset, length)

    async def flush(self) -> None:
        await self._at("flush")
        await super().flush()


def content(i: int, tag: bytes) -> bytes:
    return (tag + b"%07d" % i) * (BLOCK // 8)


def device(vol: RevertVolume, epoch: int = 1) -> EncryptedDevice:
    return EncryptedDevice(vol, BlockCipher(KEY, VID), epoch, layout_version=lambda: vol.layout)


async def write(d: EncryptedDevice, i: int, tag: bytes, fua: bool = False) -> None:
    await d.write(i * BLOCK, memoryview(content(i, tag)), fua)


async def prepared(vol: RevertVolume) -> EncryptedDevice:
    """A written, B twice; the snapshot (B's two slots live in it: a ZERO slot's
    ciphertext, zeros, authenticates under neither); A written twice more after it (its
    slots then hold only versions the snapshot's data is not: a tag block from before
    the revert makes the snapshot's A fail authentication)."""
    d = device(vol)
    await write(d, A, b"o")
    await write(d, B, b"n")
    await write(d, B, b"o")
    vol.snapshot()
    await write(d, A, b"1")
    await write(d, A, b"2")
    return d


async def check(vol: RevertVolume, d: EncryptedDevice, want: dict[int, bytes]) -> None:
    """Every block of ``want`` reads so, on this engine and on the next one."""
    for reader in (d, device(vol, epoch=9)):
        for i, data in want.items():
            assert bytes(await reader.read(i * BLOCK, BLOCK)) == data, f"block {i}"


def test_a_write_waiting_for_the_hold_does_not_queue_its_tag_block_from_before_the_revert():
    """B's write puts its tag into the cached tag block of group 0 and waits for the
    revert's hold. That copy holds A's post-snapshot tags: queued after the revert, it
    would make the snapshot's A fail authentication everywhere. It starts over on the
    reverted tag block instead."""
    vol = RevertVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = await prepared(vol)
        vol.hold(True)
        done = Done(started=False)
        assert not d.write_nowait(B * BLOCK, memoryview(content(B, b"W")), False, done)
        w = asyncio.ensure_future(write(d, B, b"W"))  # the NBD server's fallback
        for _ in range(5):
            await asyncio.sleep(0)
        assert not w.done() and d._claimed  # its tag put, waiting for the hold
        vol.revert()
        vol.hold(False)
        await w
        await check(vol, d, {A: content(A, b"o"), B: content(B, b"W")})
        assert d.counters["writes_restarted_by_revert"] == 1

    asyncio.run(go())


@pytest.mark.parametrize("waits_in", ["tag load", "settling read"])
def test_a_write_that_loaded_its_tag_block_before_a_revert_does_not_write_it_after(waits_in):
    """B's write has claimed B and read group 0's tag block (``tag read``: a new engine,
    nothing cached: the read answered with what was there before the revert) or is
    reading B's ciphertext to settle its slot (``settling read``: B's newest version not
    seen written by this engine) when the revert comes (and, there, a read after it
    finds the cache changed). The write must not go on with the copy from before the
    revert (orphaned or not): it holds A's post-snapshot tags."""
    vol = RevertVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d0 = await prepared(vol)
        await write(d0, B, b"p")  # two live slots for B: a new engine settles it
        d = device(vol, epoch=2)
        if waits_in == "tag load":
            where = f"read {layout.tag_block(0)}"
        else:
            await d.read(0, BLOCK)  # group 0 cached (as it was before the revert)
            where = f"read {layout.data_block(B)}"
        vol.gate(where)
        w = asyncio.ensure_future(write(d, B, b"W"))
        await asyncio.wait_for(vol.stopped[where].wait(), 5)
        vol.hold(True)
        vol.revert()
        vol.hold(False)
        if waits_in == "settling read":  # the cache looked at after the revert
            assert bytes(await d.read(A * BLOCK, BLOCK)) == content(A, b"o")
        vol.open(where)
        await w
        await check(vol, d, {A: content(A, b"o"), B: content(B, b"W")})

    asyncio.run(go())


GATE = {"fua": "flush", "trim": "trim", "zeroes": "trim"}  # where each stops between its two


def two_requests(d: Any, kind: str) -> tuple[asyncio.Future[Any], bytes]:
    """A FUA write, TRIM or WRITE_ZEROES of block B started. -> (it, B's content after it)."""
    if kind == "fua":
        return asyncio.ensure_future(write(d, B, b"W", fua=True)), content(B, b"W")
    if kind == "trim":
        return asyncio.ensure_future(d.trim(B * BLOCK, BLOCK)), bytes(BLOCK)
    return asyncio.ensure_future(d.write_zeroes(B * BLOCK, BLOCK, False)), bytes(BLOCK)


@pytest.mark.parametrize("kind", ["fua", "trim", "zeroes"])
def test_a_tag_block_before_a_revert_and_the_data_after_it_is_written_again(kind):
    """A FUA write (its tag block acknowledged, the volume flushed, then its data), a
    TRIM or a WRITE_ZEROES (the tag block, then the trim) are two requests: the revert's
    hold can come between them. The tag block is reverted, the data lands after it: the
    block would fail authentication (acknowledged as written). The device sees the
    revert after the data and writes both again, into the reverted tag block, with the
    same version and ciphertext."""
    vol = RevertVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = await prepared(vol)
        gate = GATE[kind]
        vol.gate(gate)
        w, want = two_requests(d, kind)
        await asyncio.wait_for(vol.stopped[gate].wait(), 5)
        vol.hold(True)
        vol.revert()
        vol.hold(False)
        vol.open(gate)
        await w
        await check(vol, d, {A: content(A, b"o"), B: want})

    asyncio.run(go())


def test_a_write_without_a_task_after_a_revert_never_uses_a_tag_block_from_before_it():
    """Pinned (no change needed): ``write_nowait`` looks at the layout and queues with no
    await between, and the volume starts nothing while the revert's hold is in place; so
    after a revert it finds the cache emptied and falls back to the task path."""
    vol = RevertVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = await prepared(vol)
        vol.hold(True)
        done = Done(started=False)
        assert not d.write_nowait(B * BLOCK, memoryview(content(B, b"W")), False, done)
        vol.revert()
        vol.hold(False)
        assert not d.write_nowait(B * BLOCK, memoryview(content(B, b"W")), False, done)
        await write(d, B, b"W")
        done = Done(started=False)
        assert d.write_nowait(B * BLOCK, memoryview(content(B, b"X")), False, done)
        done.returned = True
        assert await done.wait() is None
        await check(vol, d, {A: content(A, b"o"), B: content(B, b"X")})

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["fua", "trim", "zeroes"])
def test_no_data_is_queued_onto_tag_blocks_a_revert_rolled_back(kind):
    """Found by the write machine (``test_a_crash_after_a_revert_that_followed_a_fua_
    write``): a FUA write's tag block is acknowledged, a revert's hold comes before its
    data is queued and rolls that tag block back. Its data then used to land after the
    revert, on the reverted tag block, and the device wrote its tags again only after
    that data was acknowledged: a crash in between left B (new data, the snapshot's
    slots) failing authentication. A TRIM or WRITE_ZEROES (its ZERO tags, then the trim:
    zeros under the snapshot's data slots) likewise. Now the data (the trim) is queued
    only while the tag blocks acknowledged are still the cached ones (checked where it
    is queued, with no await between): after the revert, nothing of it lands before its
    tags again. A crash after every prefix of the mutations after the revert: B reads
    old or new."""
    vol = RevertVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = await prepared(vol)
        gate = GATE[kind]
        vol.gate(gate)  # its tag block acknowledged, its data not queued yet
        w, new = two_requests(d, kind)
        await asyncio.wait_for(vol.stopped[gate].wait(), 5)
        vol.hold(True)
        vol.revert()
        mark = len(vol.log)
        vol.hold(False)
        vol.open(gate)
        await w
        assert d.counters["writes_restarted_by_revert"] == 1
        after = vol.log[mark:]
        assert after[0][1] == layout.tag_block(0) * BLOCK, "data before its tags again"
        for k in range(len(after) + 1):
            crashed = RevertVolume(vol.size)
            crashed.copies = [bytearray(s) for s in vol.snap]
            for _, offset, data in after[:k]:
                crashed.copies[0][offset : offset + len(data)] = data
            reader = device(crashed, epoch=9)
            assert bytes(await reader.read(A * BLOCK, BLOCK)) == content(A, b"o")
            got = bytes(await reader.read(B * BLOCK, BLOCK))
            assert got in (content(B, b"o"), new), f"B after {k} mutations"
        await check(vol, d, {A: content(A, b"o"), B: new})

    asyncio.run(go())


class RepairVolume(RevertVolume):
    """Two copies; gates ``copies`` (``read_copies`` answered, its answer held) and
    ``data A`` (a write of A's ciphertext, on either path, before it is applied)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.copies.append(bytearray(size))

    async def read_copies(self, offset: int, length: int) -> list[tuple[str, bytes]]:
        got = await super().read_copies(offset, length)
        if offset == layout.data_block(A) * BLOCK:
            await self._at("copies")
        return got

    async def write_checked(self, offset: int, data: Any, fua: bool, ready: Any) -> None:
        if offset == layout.data_block(A) * BLOCK:
            await self._at("data A")
        await super().write_checked(offset, data, fua, ready)

    async def write(self, offset: int, data: Any, fua: bool) -> None:
        if offset == layout.data_block(A) * BLOCK:
            await self._at("data A")
        await super().write(offset, data, fua)


@pytest.mark.parametrize("revert_after", ["copies read", "tag entry written"])
def test_a_repair_never_writes_a_copy_from_before_a_revert_back_after_it(revert_after):
    """A is bad on the copy the device reads (its ciphertext, or its tag entry), good on
    the other: a read repairs it from the other copy (tag entry if it differs, then
    ciphertext). A revert comes after the copies were read, or after the repaired tag
    entry was written and before the ciphertext: the pre-revert ciphertext written back
    after it would land under the snapshot's slots and fail authentication. The repair
    is given up instead (its read, which raced the revert, returns the copy); A reads
    the snapshot's content."""
    vol = RepairVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = await prepared(vol)
        if revert_after == "copies read":  # A's ciphertext damaged on copy 0
            bad = layout.data_block(A) * BLOCK
        else:  # A's tag entry erased on copy 0: the repair writes it, then the ciphertext
            bad = layout.tag_block(0) * BLOCK + A * 64
        vol.copies[0][bad : bad + 64] = bytes(64)
        # nothing cached: it reads copy 0's tag block; repairs from the copies
        d = EncryptedDevice(
            vol, BlockCipher(KEY, VID), 2, copies=vol, layout_version=lambda: vol.layout
        )
        gate = "copies" if revert_after == "copies read" else "data A"
        vol.gate(gate)
        r = asyncio.ensure_future(d.read(A * BLOCK, BLOCK))
        await asyncio.wait_for(vol.stopped[gate].wait(), 5)
        vol.hold(True)
        vol.revert()
        vol.hold(False)
        vol.open(gate)
        assert bytes(await r) == content(A, b"2")  # the read raced the revert
        await check(vol, d, {A: content(A, b"o"), B: content(B, b"o")})
        assert d.counters["authentication_repaired"] == 0

    asyncio.run(go())
