"""The encrypting device's writes without a task (``frontend/encrypted_write_callbacks.py``)
over the in-memory twin of the replicated volume (``tests/support/memory_volume.py``): the
common write goes in one ordered call (tag block, then ciphertext) and is answered by a
callback, never before ``write_nowait`` returns; everything else starts nothing (FUA, a tag
block not cached, a claimed block, a slot to settle, a volume that cannot start at once);
a replica failing mid-write, a failed tag block write, overlapping writes and a rekey
sweep behave as on the task path. Both cipher paths (tests/support/cipher_paths.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import ReplicaIOError
from cargohold.frontend.encrypted_device import EncryptedDevice
from cargohold.frontend.rekey_sweep import Rekey
from tests.support.done_recorder import Done
from tests.support.memory_volume import MemoryVolume

KEY = bytes(range(32))
NEW = bytes(range(100, 132))
VID = bytes(range(16))
GROUPS = 4
LOGICAL = GROUPS * layout.GROUP_BYTES


def device(vol: MemoryVolume, epoch: int = 1, keys: Any = KEY) -> EncryptedDevice:
    return EncryptedDevice(vol, BlockCipher(keys, VID), epoch, copies=vol)


def pattern(i: int, n: int = 1, tag: bytes = b"n") -> bytes:
    return b"".join((tag + b"%07d" % (i + k)) * (BLOCK // 8) for k in range(n))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def start(d: EncryptedDevice, offset: int, data: bytes, fua: bool = False) -> Done | None:
    """``write_nowait``: its Done, or None when it started nothing."""
    done = Done(started=False)
    ok = d.write_nowait(offset, memoryview(data), fua, done)
    done.returned = True
    return done if ok else None


async def warm(d: EncryptedDevice, *blocks: int) -> None:
    """Each block's group's tag block cached and every slot of it settled (the task path
    writes them once)."""
    for i in blocks:
        await d.write(i * BLOCK, memoryview(pattern(i, tag=b"w")), False)


def test_a_write_without_a_task_goes_in_one_ordered_call_and_reads_back() -> None:
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=3)

    async def go() -> None:
        d = device(vol)
        await warm(d, 3, 70, 130, 200)
        vol.delay = 0.01  # the replicas answer later
        before = len(vol.log)
        done = start(d, 3 * BLOCK, pattern(3))
        assert done is not None and done.calls == []
        assert vol.nowait_calls == 1
        # queued at once: the tag block, then the ciphertext, nothing else
        ops = [(off // BLOCK, len(data) // BLOCK) for _, off, data in vol.log[before:]]
        assert ops == [(layout.tag_block(3), 1), (layout.data_block(3), 1)]
        assert 3 in d._claimed  # claimed until answered
        assert await done.wait() is None
        assert not d._claimed
        # a write over two whole groups and part of a third: tag blocks, partial, extent
        span = pattern(GROUP - 6, 2 * GROUP + 6)
        multi = start(d, (GROUP - 6) * BLOCK, span)
        assert multi is not None and await multi.wait() is None
        assert await d.read(3 * BLOCK, BLOCK) == pattern(3)
        assert await d.read((GROUP - 6) * BLOCK, len(span)) == span
        assert d.counters["encrypted_writes_nowait"] == 2
        assert d.counters["encrypted_blocks"] == 4 + 1 + 2 * GROUP + 6
        for reader in range(3):  # every copy, read by a new engine
            vol.reader = reader
            again = device(vol, epoch=2)
            assert await again.read(3 * BLOCK, BLOCK) == pattern(3)
            assert await again.read((GROUP - 6) * BLOCK, len(span)) == span
        assert b"n0000003" not in vol.copies[0]  # ciphertext only below

    run(go())


def test_what_it_cannot_start_at_once_starts_nothing_and_the_task_path_does_it() -> None:
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol)
        assert start(d, 0, pattern(0)) is None  # its tag block is not cached
        await warm(d, 0, 1)
        version, log = d._counter, len(vol.log)
        assert start(d, 0, pattern(0), fua=True) is None  # FUA: the tags durable first
        vol.held = True  # a hold or a rebuild step: the volume starts nothing
        assert start(d, 0, pattern(0)) is None
        vol.held = False
        assert start(d, GROUP * BLOCK, pattern(GROUP)) is None  # group 1 not cached
        d.wrong_key = "wrong"
        assert start(d, 0, pattern(0)) is None
        d.wrong_key = None
        assert len(vol.log) == log and vol.nowait_calls == 0
        assert d._counter <= version + 1  # at most a version spent (the volume refused)
        assert d._cache[0].written == d._cache[0].applied  # no tag change made
        # a new engine: block 1's older slot was never retired (no tag block write after
        # its data's): its newest version may not have landed, the task path settles it
        again = device(vol, epoch=2)
        assert await again.read(0, 2 * BLOCK) == b"".join(pattern(i, tag=b"w") for i in (0, 1))
        assert start(again, BLOCK, pattern(1)) is None
        done = start(again, 0, pattern(0))  # block 0's older slot is retired: nothing to do
        assert done is not None and await done.wait() is None
        await again.write(BLOCK, memoryview(pattern(1, tag=b"t")), False)  # settles block 1
        done = start(again, BLOCK, pattern(1))
        assert done is not None and await done.wait() is None
        assert await device(vol, epoch=3).read(0, 2 * BLOCK) == pattern(0) + pattern(1)

    run(go())


@pytest.mark.parametrize("after", [0, 1])
def test_a_replica_failing_mid_write_fails_it_and_keeps_old_or_new_on_every_copy(after):
    """One replica gets nothing (``after`` 0) or the tag block only (1): the write fails
    (fewer than min_replicas stored it); that copy still reads the old content, the
    others the new; the cached tag block is dropped (read again)."""
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol)
        await warm(d, 3)
        vol.cut_copy = (1, after)
        done = start(d, 3 * BLOCK, pattern(3))
        assert done is not None
        err = await done.wait()
        assert isinstance(err, ReplicaIOError) and "cut short" in str(err)
        assert not d._claimed and 0 not in d._cache  # stale: read again
        assert d.counters["encrypted_blocks"] == 1  # the warm-up write only
        for reader, want in ((1, pattern(3, tag=b"w")), (0, pattern(3))):
            vol.reader = reader
            assert await device(vol, epoch=2).read(3 * BLOCK, BLOCK) == want
        vol.reader = 0
        assert await d.read(3 * BLOCK, BLOCK) == pattern(3)  # the tag block read again
        assert start(d, 3 * BLOCK, pattern(4)) is None  # its slots settle first again
        await d.write(3 * BLOCK, memoryview(pattern(4)), False)
        done = start(d, 3 * BLOCK, pattern(5))
        assert done is not None and await done.wait() is None
        for reader in (0, 1):
            vol.reader = reader
            assert await device(vol, epoch=3).read(3 * BLOCK, BLOCK) == pattern(5)

    run(go())


def test_a_failed_tag_block_write_writes_no_data_and_the_block_reads_old() -> None:
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol)
        await warm(d, 5)
        vol.fail_after = len(vol.log)  # the tag block's write fails: nothing after it
        done = start(d, 5 * BLOCK, pattern(5))
        assert done is not None
        assert "crashed" in str(await done.wait())
        assert not d._claimed and 0 not in d._cache
        vol.fail_after = None
        assert await d.read(5 * BLOCK, BLOCK) == pattern(5, tag=b"w")
        assert await device(vol, epoch=2).read(5 * BLOCK, BLOCK) == pattern(5, tag=b"w")

    run(go())


def test_overlapping_writes_wait_for_each_other_and_the_last_one_wins() -> None:
    vol = MemoryVolume(layout.physical_size(LOGICAL), delay=0.01)

    async def go() -> None:
        d = device(vol)
        await warm(d, 0, 1)
        first = start(d, 0, pattern(0, 2, b"a"))
        assert first is not None
        assert start(d, BLOCK, pattern(1, 1, b"b")) is None  # block 1 is claimed
        # the task path waits for the claim, then writes after it
        second = asyncio.ensure_future(d.write(BLOCK, memoryview(pattern(1, 1, b"c")), False))
        await asyncio.sleep(0)
        assert not second.done() and first.calls == []
        assert await first.wait() is None
        await asyncio.wait_for(second, 5)
        # a task-path write in flight: its blocks are claimed, nothing starts over them
        third = asyncio.ensure_future(d.write(0, memoryview(pattern(0, 1, b"d")), False))
        await asyncio.sleep(0)
        assert 0 in d._claimed and start(d, 0, pattern(0, 1, b"e")) is None
        await asyncio.wait_for(third, 5)
        want = pattern(0, 1, b"d") + pattern(1, 1, b"c")
        assert await d.read(0, 2 * BLOCK) == want
        assert await device(vol, epoch=2).read(0, 2 * BLOCK) == want

    run(go())


def test_a_rekey_sweep_waits_for_a_write_without_a_task_and_sweeps_its_data() -> None:
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol, keys=[KEY])
        await warm(d, 0, GROUP + 2)
        vol.delay = 0.5  # still in flight after the sleep below, even on a loaded machine
        done = start(d, 0, pattern(0))  # sealed under the old key
        assert done is not None
        rekey = Rekey(d, [KEY])
        rekey.install([NEW, KEY])
        await asyncio.sleep(0.01)
        assert done.calls == [] and rekey.status()["state"] == "running"
        # a write started while the sweep runs seals under the new key
        late = start(d, (GROUP + 2) * BLOCK, pattern(GROUP + 2))
        assert await done.wait() is None
        if late is not None:
            assert await late.wait() is None
        else:  # the sweep holds its group: the task path
            await d.write((GROUP + 2) * BLOCK, memoryview(pattern(GROUP + 2)), False)
        vol.delay = 0
        assert (await asyncio.wait_for(rekey.wait(), 10))["state"] == "done"
        new_only = device(vol, epoch=2, keys=[NEW])  # the old key is not needed
        assert await new_only.read(0, BLOCK) == pattern(0)
        assert await new_only.read((GROUP + 2) * BLOCK, BLOCK) == pattern(GROUP + 2)

    run(go())


def test_reads_and_writes_without_a_task_keep_their_tag_blocks_cached_longest() -> None:
    """The tag cache evicts the least recently used tag block: a read that finds its tag
    block cached and a write without a task use it too (they once left it where it was
    loaded, so a busy group's tag block was evicted as if unused and read again)."""
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=3)

    async def go() -> None:
        d = EncryptedDevice(vol, BlockCipher(KEY, VID), 1, copies=vol, cache_blocks=4)
        await warm(d, *(g * GROUP for g in range(4)))  # groups 0-3 cached, 0 the oldest
        assert list(d._cache) == [0, 1, 2, 3]
        assert await d.read(0, BLOCK) == pattern(0, tag=b"w")
        assert list(d._cache)[-1] == 0  # the read used group 0's
        recorder = start(d, 1 * GROUP * BLOCK, pattern(7))
        assert recorder is not None
        await recorder.wait()
        assert list(d._cache)[-1] == 1  # the write without a task used group 1's
        assert list(d._cache) == [2, 3, 0, 1]

    run(go())
