"""The encrypting device over an in-memory twin of the replicated volume
(``tests/support/memory_volume.py``): round trips, ciphertext only below, tag writes merged,
the crash property (a crash between any two mutations leaves each block old or new, never
an error), repair from another copy, the key check, zeroes, block status, the cache bound."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import ChecksumError, WrongDataKey
from cargohold.frontend.device import STATE_HOLE, BlockDevice
from cargohold.frontend.encrypted_device import EncryptedDevice
from tests.support.memory_volume import MemoryVolume

KEY = bytes(range(32))
VID = bytes(range(16))
GROUPS = 6
LOGICAL = GROUPS * layout.GROUP_BYTES


class UnorderedVolume(MemoryVolume):
    """The twin without ``write_ordered``: a volume below that cannot order writes."""

    write_ordered = None  # type: ignore[assignment]
    write_ordered_nowait = None  # type: ignore[assignment]


def device(vol: MemoryVolume, epoch: int = 1, key: bytes = KEY, **kw) -> EncryptedDevice:  # type: ignore[no-untyped-def]
    return EncryptedDevice(vol, BlockCipher(key, VID), epoch, copies=vol, **kw)


def pattern(i: int, n: int = 1) -> bytes:
    return b"".join(
        (b"blk%08d" % (i + k)) * (BLOCK // 11) + b"\x00" * (BLOCK % 11) for k in range(n)
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_round_trip_and_only_ciphertext_below():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=3)

    async def go() -> None:
        d = device(vol)
        assert isinstance(d, BlockDevice)
        assert d.size == LOGICAL
        await d.write(0, memoryview(pattern(0, 3)), False)  # partial group
        await d.write(GROUP * BLOCK, memoryview(pattern(64, 2 * GROUP)), True)  # whole groups
        await d.write(5 * GROUP * BLOCK - BLOCK, memoryview(pattern(319, 2)), False)  # across
        assert await d.read(0, 3 * BLOCK) == pattern(0, 3)
        assert await d.read(GROUP * BLOCK, 2 * GROUP * BLOCK) == pattern(64, 2 * GROUP)
        assert await d.read(5 * GROUP * BLOCK - BLOCK, 2 * BLOCK) == pattern(319, 2)
        assert await d.read(10 * BLOCK, BLOCK) == bytes(BLOCK)  # never written
        assert d.read_now(0, 3 * BLOCK) == pattern(0, 3)
        again = device(vol, epoch=2)  # a new engine: nothing cached
        assert await again.check_key()
        assert await again.read(0, LOGICAL) == (
            pattern(0, 3)
            + bytes(61 * BLOCK)
            + pattern(64, 128)
            + bytes(2 * GROUP * BLOCK - BLOCK)
            + pattern(319, 2)
            + bytes(GROUP * BLOCK - BLOCK)
        )

    run(go())
    for copy in vol.copies:
        assert b"blk00000" not in copy and b"blk00000319" not in copy
    assert b"blk0000" not in vol.copies[0]


def test_whole_groups_go_as_one_extent_after_their_tags():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol)
        await d.write(GROUP * BLOCK, memoryview(pattern(64, 3 * GROUP)), False)

    run(go())
    ops = [(op, off // BLOCK, len(data) // BLOCK) for op, off, data in vol.log]
    tags = [("write", layout.tag_block(g * GROUP), 1) for g in (1, 2, 3)]
    assert sorted(ops[:3]) == tags  # the three tag blocks first
    assert ops[3:] == [("write", layout.data_block(GROUP), 3 * (GROUP + 1))]


def test_concurrent_writes_to_neighbours_share_tag_writes():
    """Writes of neighbours that wait together below (here: the twin's delay; in the
    engine: a hold or a rebuild window) queue one tag block snapshot holding all their
    changes, the first of them; the others queue their data behind it."""
    vol = MemoryVolume(layout.physical_size(LOGICAL), delay=0.002)

    async def go() -> EncryptedDevice:
        d = device(vol)
        await asyncio.gather(
            *(d.write(i * BLOCK, memoryview(pattern(i)), False) for i in range(GROUP))
        )
        for i in range(GROUP):
            assert await d.read(i * BLOCK, BLOCK) == pattern(i)
        return d

    d = run(go())
    tag_writes = [k for k, (_, off, _) in enumerate(vol.log) if off == layout.tag_block(0) * BLOCK]
    assert len(tag_writes) < GROUP // 4, tag_writes  # merged, not one per write
    assert tag_writes[0] == 0  # ahead of every data write
    assert d.counters["encrypted_blocks"] == GROUP
    assert d.counters["tag_block_writes_merged"] >= GROUP - len(tag_writes)
    assert vol.ordered_calls == GROUP  # each write: one round trip


def test_tag_writes_of_a_volume_without_ordered_writes_are_merged_while_one_is_in_flight():
    """The volume below cannot order writes: the tag block is written and acknowledged
    before the data, one write of it in flight, the changes made meanwhile in the next."""
    vol = UnorderedVolume(layout.physical_size(LOGICAL), delay=0.002)

    async def go() -> None:
        d = device(vol)
        await asyncio.gather(
            *(d.write(i * BLOCK, memoryview(pattern(i)), False) for i in range(GROUP))
        )
        for i in range(GROUP):
            assert await d.read(i * BLOCK, BLOCK) == pattern(i)

    run(go())
    tag_writes = sum(1 for _, off, _ in vol.log if off == layout.tag_block(0) * BLOCK)
    assert tag_writes < GROUP // 4, tag_writes
    assert vol.ordered_calls == 0


@pytest.mark.parametrize("after", [0, 1])
def test_a_replica_whose_tag_write_fails_never_gets_the_data_and_reads_old(after):
    """Tag block and data queued back to back; on one replica the tag write fails (it
    gets nothing: ``after`` 0) or the data does (``after`` 1: the tag block only). That
    replica still holds the old content, and reads it; the other reads the new."""
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol)
        await d.write(3 * BLOCK, memoryview(pattern(1)), False)
        before = bytes(vol.copies[1])
        vol.cut_copy = (1, after)
        with pytest.raises(Exception, match="cut short"):
            await d.write(3 * BLOCK, memoryview(pattern(2)), False)
        data = layout.data_block(3) * BLOCK
        assert vol.copies[1][data : data + BLOCK] == before[data : data + BLOCK]
        tags = layout.tag_block(3) * BLOCK
        assert (vol.copies[1][tags : tags + BLOCK] == before[tags : tags + BLOCK]) == (after == 0)
        for reader, want in ((1, pattern(1)), (0, pattern(2))):
            vol.reader = reader
            assert await device(vol, epoch=2).read(3 * BLOCK, BLOCK) == want

    run(go())


def test_overlapping_writes_of_one_block_are_ordered():
    vol = MemoryVolume(layout.physical_size(LOGICAL), delay=0.001)

    async def go() -> None:
        d = device(vol)
        await asyncio.gather(*(d.write(0, memoryview(pattern(k)), False) for k in range(8)))
        got = bytes(await device(vol, epoch=2).read(0, BLOCK))
        assert got in {pattern(k) for k in range(8)}

    run(go())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["write", "zero"]), st.integers(0, 2 * GROUP - 1), st.integers(1, 70)
        ),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_a_crash_between_any_two_mutations_leaves_each_block_old_or_new(ops, data):
    """Writes and zeroes one after the other; a crash after any prefix of the mutations
    that reached the volume below; a new engine (next epoch) reads every block: it is the
    content before the interrupted request or after it, never an authentication error."""
    nblocks = 2 * GROUP + 70
    logical = layout.logical_size_for(nblocks * BLOCK)
    vol = MemoryVolume(layout.physical_size(logical))
    states: list[list[bytes]] = [[bytes(BLOCK)] * (logical // BLOCK)]
    marks = [0]  # mutations below after each request

    async def go() -> None:
        d = device(vol)
        for n, (kind, lo, count) in enumerate(ops):
            new = list(states[-1])
            if kind == "write":
                buf = b"".join(bytes([n + 1]) * 8 + os.urandom(8) * 511 for _ in range(count))
                await d.write(lo * BLOCK, memoryview(buf), False)
                for k in range(count):
                    new[lo + k] = buf[k * BLOCK : (k + 1) * BLOCK]
            else:
                await d.write_zeroes(lo * BLOCK, count * BLOCK, False)
                for k in range(count):
                    new[lo + k] = bytes(BLOCK)
            states.append(new)
            marks.append(len(vol.log))

    run(go())
    cut = data.draw(st.integers(0, len(vol.log)), label="crash after mutation")
    req = next(k for k in range(len(marks)) if marks[k] >= cut)  # the request cut short
    before, after = states[max(req - 1, 0)], states[req]

    async def check() -> None:
        d = device(vol.replay(cut), epoch=2)
        assert await d.check_key()
        got = await d.read(0, logical)
        for b in range(logical // BLOCK):
            assert got[b * BLOCK : (b + 1) * BLOCK] in (before[b], after[b]), b

    run(check())


def test_a_block_bad_on_one_copy_is_read_from_another_and_repaired():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=3)

    async def go() -> None:
        d = device(vol)
        await d.write(0, memoryview(pattern(0, 4)), False)
        # replica 0's copy of block 2 altered (its own checksum would hold: a write
        # around the engine); the engine reads replica 0
        vol.copies[0][layout.data_block(2) * BLOCK + 100] ^= 0xFF
        fresh = device(vol, epoch=2)
        assert await fresh.read(0, 4 * BLOCK) == pattern(0, 4)
        assert fresh.counters["authentication_errors"] == 1
        assert fresh.counters["authentication_repaired"] == 1
        assert vol.copies[0] == vol.copies[1] == vol.copies[2]

    run(go())


def test_a_block_bad_everywhere_is_an_error_and_counted():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol)
        await d.write(0, memoryview(pattern(0, 2)), False)
        for c in vol.copies:
            c[layout.tag_block(1) * BLOCK + 64 + 10] ^= 1  # block 1's tag, everywhere
        fresh = device(vol, epoch=2)
        assert await fresh.read(0, BLOCK) == pattern(0)
        with pytest.raises(ChecksumError, match="block 1 fails authentication") as e:
            await fresh.read(0, 2 * BLOCK)
        assert e.value.detail["blocks"] == [1]
        assert fresh.counters["authentication_errors"] == 1

    run(go())


def test_a_wrong_key_reads_errors_and_writes_nothing():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol)
        await d.write(3 * GROUP * BLOCK, memoryview(pattern(0, 2)), False)
        before = [bytes(c) for c in vol.copies]
        wrong = device(vol, epoch=2, key=bytes(32))
        assert not await wrong.check_key()
        assert "does not authenticate" in (wrong.wrong_key or "")
        with pytest.raises(ChecksumError):
            await wrong.read(3 * GROUP * BLOCK, BLOCK)
        with pytest.raises(WrongDataKey):
            await wrong.write(0, memoryview(pattern(9)), False)
        with pytest.raises(WrongDataKey):
            await wrong.write_zeroes(0, BLOCK, False)
        assert [bytes(c) for c in vol.copies] == before
        assert wrong.status()["key_check"] == "failed"
        blank = device(MemoryVolume(layout.physical_size(LOGICAL)), key=bytes(32))
        assert await blank.check_key()

    run(go())


def test_zeroes_and_trims_read_as_zeros_and_release_the_ciphertext():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol)
        await d.write(0, memoryview(pattern(0, 3 * GROUP)), False)
        await d.write_zeroes(BLOCK, 2 * BLOCK, False)  # within a group
        await d.trim(GROUP * BLOCK, GROUP * BLOCK)  # a whole group: a fresh tag block
        want = pattern(0) + bytes(2 * BLOCK) + pattern(3, GROUP - 3) + bytes(GROUP * BLOCK)
        want += pattern(2 * GROUP, GROUP)
        assert await d.read(0, 3 * GROUP * BLOCK) == want
        assert await device(vol, epoch=2).read(0, 3 * GROUP * BLOCK) == want
        st = await d.block_status(0, 3 * GROUP * BLOCK)
        assert st[0] == (BLOCK, 0) and st[1][1] & STATE_HOLE and st[1][0] == 2 * BLOCK
        assert sum(n for n, _ in st) == 3 * GROUP * BLOCK
        phys = layout.data_block(GROUP) * BLOCK
        assert not any(vol.copies[0][phys : phys + GROUP * BLOCK])

    run(go())


def test_a_replayed_previous_version_stops_authenticating_after_the_next_tag_write():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=1)

    async def go() -> None:
        d = device(vol)
        at = layout.data_block(0) * BLOCK
        await d.write(0, memoryview(pattern(1)), False)
        old = bytes(vol.copies[0][at : at + BLOCK])
        await d.write(0, memoryview(pattern(2)), False)
        await d.write(BLOCK, memoryview(pattern(3)), False)  # same tag block: retires
        vol.copies[0][at : at + BLOCK] = old  # replay version 1's ciphertext
        with pytest.raises(ChecksumError):
            await device(vol, epoch=2).read(0, BLOCK)

    run(go())


def test_the_tag_cache_is_bounded():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol, cache_blocks=4)
        for g in range(GROUPS):
            await d.write(g * GROUP * BLOCK, memoryview(pattern(g)), False)
        assert d.status()["cached_tag_blocks"] <= 4
        for g in range(GROUPS):
            assert await d.read(g * GROUP * BLOCK, BLOCK) == pattern(g)

    run(go())


def test_a_failed_tag_write_fails_the_write_and_writes_no_data():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol)
        await d.write(0, memoryview(pattern(1)), False)
        vol.fail_after = len(vol.log)
        with pytest.raises(Exception, match="crashed"):
            await d.write(0, memoryview(pattern(2)), False)
        vol.fail_after = None
        assert await d.read(0, BLOCK) == pattern(1)
        await d.write(0, memoryview(pattern(3)), False)
        assert await device(vol, epoch=2).read(0, BLOCK) == pattern(3)

    run(go())


def test_the_volume_grows_by_whole_groups():
    vol = MemoryVolume(layout.physical_size(LOGICAL))
    d = device(vol)
    for c in vol.copies:
        c.extend(bytes(layout.PHYSICAL_GROUP_BYTES + BLOCK))  # a group and a stray block
    assert d.size == LOGICAL + layout.GROUP_BYTES


def test_the_tag_cache_is_dropped_when_the_content_changes_underneath():
    vol = MemoryVolume(layout.physical_size(LOGICAL))
    version = [0]

    async def go() -> None:
        d = device(vol, layout_version=lambda: version[0])
        await d.write(0, memoryview(pattern(1)), False)
        saved = [bytes(c) for c in vol.copies]  # a snapshot
        await d.write(0, memoryview(pattern(2)), False)
        await d.write(BLOCK, memoryview(pattern(3)), False)  # retires block 0's old slot
        vol.copies[:] = [bytearray(c) for c in saved]  # reverted underneath
        version[0] += 1
        assert await d.read(0, 2 * BLOCK) == pattern(1) + bytes(BLOCK)
        await d.write(BLOCK, memoryview(pattern(4)), False)
        assert await device(vol, epoch=2).read(0, 2 * BLOCK) == pattern(1) + pattern(4)

    run(go())


def test_a_fua_write_makes_its_tags_durable_before_its_data():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol)
        await d.write(0, memoryview(pattern(1)), False)
        assert vol.flushes == 0
        await d.write(BLOCK, memoryview(pattern(2)), True)
        assert vol.flushes == 1  # between the tag write and the (FUA) data write
        assert [op for op, _, _ in vol.log[-2:]] == ["write", "write"]

    run(go())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 2 * GROUP - 1), st.integers(1, 66)), min_size=2, max_size=10),
    st.data(),
)
def test_concurrent_writes_then_a_crash_never_read_as_an_error(writes, data):
    """Overlapping writes in flight together (tag writes merged, blocks claimed), a crash
    after any prefix of the mutations below: every block reads as something written to it
    (or zeros), never as an authentication error."""
    logical = 4 * layout.GROUP_BYTES
    vol = MemoryVolume(layout.physical_size(logical), delay=0.0005)
    seen: dict[int, set[bytes]] = {b: {bytes(BLOCK)} for b in range(logical // BLOCK)}

    async def go() -> None:
        d = device(vol)
        jobs = []
        for n, (lo, count) in enumerate(writes):
            buf = b"".join(bytes([n + 1, k % 256]) * (BLOCK // 2) for k in range(count))
            for k in range(count):
                seen[lo + k].add(buf[k * BLOCK : (k + 1) * BLOCK])
            jobs.append(d.write(lo * BLOCK, memoryview(buf), False))
        await asyncio.gather(*jobs)

    run(go())
    # how many mutations merge depends on timing: draw where to cut as a fraction
    cut = len(vol.log) * data.draw(st.integers(0, 1000), label="crash point, per mille") // 1000

    async def check() -> None:
        got = await device(vol.replay(cut), epoch=2).read(0, logical)
        for b in range(logical // BLOCK):
            assert bytes(got[b * BLOCK : (b + 1) * BLOCK]) in seen[b], b

    run(check())


def test_a_read_that_raced_a_retirement_is_read_again_not_counted_as_an_error():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        d = device(vol)
        at = layout.data_block(0) * BLOCK
        await d.write(0, memoryview(pattern(1)), False)
        old = bytes(vol.copies[0][at : at + BLOCK])
        await d.write(0, memoryview(pattern(2)), False)
        await d.write(BLOCK, memoryview(pattern(3)), False)  # retires version 1's slot
        real = vol.read
        served = []

        async def stale_once(offset: int, length: int) -> bytes:  # read before the write
            data = await real(offset, length)
            if not served and offset == at:
                served.append(1)
                return old + data[BLOCK:]
            return data

        vol.read = stale_once  # type: ignore[method-assign]
        vol.read_now = lambda offset, length: None  # type: ignore[method-assign]
        assert await d.read(0, 2 * BLOCK) == pattern(2) + pattern(3)
        assert d.counters["authentication_retries"] == 1
        assert d.counters["authentication_errors"] == 0

    run(go())


def test_reads_answered_at_once_are_counted_too():
    """``decrypted_blocks`` counts the local-read path's blocks as well (it counted only
    the blocks of reads that took a task: the fault matrix saw 19 for a whole volume)."""
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol)
        await d.write(0, memoryview(pattern(0, 4)), False)
        assert await d.read(0, 2 * BLOCK) == pattern(0, 2)
        assert d.counters["decrypted_blocks"] == 2
        assert d.read_now(0, 4 * BLOCK) == pattern(0, 4)
        assert d.counters["decrypted_blocks"] == 6

    run(go())
