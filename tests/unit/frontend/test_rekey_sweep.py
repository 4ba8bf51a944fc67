"""The data-key rotation's sweep (``frontend/rekey_sweep.py``) over the in-memory twin of
the replicated volume (``tests/support/memory_volume.py``): after a sweep every written
block is under the newest key with its plaintext unchanged, ZERO slots stay ZERO, never
written blocks stay unwritten; foreground writes racing the sweep win (hypothesis, against
a model); a crash after any mutation of a sweep loses nothing and a new sweep completes;
the ``data-keys`` op's refusals and its idempotence; no key material in a reply."""

from __future__ import annotations

import asyncio
import base64
import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, ENTRY, GROUP
from cargohold.engine import control
from cargohold.errors import CargoholdError, InvalidArgument, WrongState
from cargohold.frontend.encrypted_device import EncryptedDevice
from cargohold.frontend.rekey_sweep import Rekey
from tests.support.memory_volume import MemoryVolume
from tests.unit.frontend.test_encrypted_device_crashes import KEY as CRASH_KEY
from tests.unit.frontend.test_encrypted_device_crashes import NBLOCKS as CRASH_NBLOCKS
from tests.unit.frontend.test_encrypted_device_crashes import CrashMachine

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
NEWER = bytes(range(200, 232))
VID = bytes(range(16))
GROUPS = 4
NBLOCKS = GROUPS * GROUP
LOGICAL = NBLOCKS * BLOCK
ZERO = bytes(BLOCK)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def device(vol: MemoryVolume, keys: list[bytes], epoch: int = 1, **kw) -> EncryptedDevice:  # type: ignore[no-untyped-def]
    return EncryptedDevice(vol, BlockCipher(keys, VID), epoch, copies=vol, **kw)


def content(i: int, n: int = 1, tag: bytes = b"p") -> bytes:
    return b"".join((tag + b"%07d" % (i + k)) * (BLOCK // 8) for k in range(n))


def key_indexes(vol: MemoryVolume, cipher: BlockCipher, copy: int = 0) -> list[int | None]:
    """Which key each logical block is under, on one replica's copy."""
    c = vol.copies[copy]
    out = []
    for i in range(NBLOCKS):
        d = layout.data_block(i) * BLOCK
        t = layout.tag_block(i) * BLOCK + layout.tag_offset(i)
        out.append(cipher.key_index(i, c[d : d + BLOCK], c[t : t + ENTRY]))
    return out


async def populate(vol: MemoryVolume) -> list[bytes]:
    """Under OLD: data in groups 0 and 2, zeros (a partial and a whole group) in group 1
    and 3's start; the rest never written. -> the model (each block's content)."""
    d = device(vol, [OLD])
    model = [ZERO] * NBLOCKS
    await d.write(0, memoryview(content(0, 40)), False)
    model[0:40] = [content(i) for i in range(40)]
    await d.write(2 * GROUP * BLOCK, memoryview(content(2 * GROUP, GROUP)), False)
    model[2 * GROUP : 3 * GROUP] = [content(i) for i in range(2 * GROUP, 3 * GROUP)]
    await d.write(10 * BLOCK, memoryview(content(10, 5, b"q")), False)  # overwritten
    model[10:15] = [content(i, 1, b"q") for i in range(10, 15)]
    await d.write_zeroes(20 * BLOCK, 4 * BLOCK, False)  # zeros inside written data
    model[20:24] = [ZERO] * 4
    await d.write(GROUP * BLOCK, memoryview(content(GROUP, GROUP)), False)
    await d.trim(GROUP * BLOCK, GROUP * BLOCK)  # a whole group of ZERO slots
    await d.trim(3 * GROUP * BLOCK, 3 * BLOCK)  # ZERO slots over never-written blocks
    return model


async def read_all(d: EncryptedDevice) -> list[bytes]:
    got = bytes(await d.read(0, LOGICAL))
    return [got[i * BLOCK : (i + 1) * BLOCK] for i in range(NBLOCKS)]


def test_after_a_sweep_every_written_block_is_under_the_newest_key_and_reads_the_same():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        model = await populate(vol)
        before = key_indexes(vol, BlockCipher([NEW, OLD], VID))
        d = device(vol, [OLD], epoch=2)
        rekey = Rekey(d, [OLD])
        assert rekey.status()["state"] == "idle"
        rekey.install([NEW, OLD])
        got = await rekey.wait()
        assert got["state"] == "done", got
        assert got["keys"] == 2 and got["error"] is None
        assert got["groups_done"] == got["groups_total"] == GROUPS
        written = [k for k in before if k is not None]
        assert set(written) == {1}  # everything written was under OLD
        assert got["blocks_rewritten"] == len(written)
        assert vol.flushes >= 1  # done means durable
        after = key_indexes(vol, BlockCipher([NEW, OLD], VID))
        for copy in range(2):  # every replica's copy
            assert key_indexes(vol, BlockCipher([NEW, OLD], VID), copy) == after
        # written blocks (ZERO slots included) now under NEW; never-written ones untouched
        assert after == [None if k is None else 0 for k in before]
        assert await read_all(d) == model
        assert await read_all(device(vol, [NEW], epoch=3)) == model  # the old key is not needed
        # a second sweep finds nothing to do (restartable, idempotent)
        again = Rekey(device(vol, [NEW, OLD], epoch=4), [NEW, OLD])
        again.start()
        assert (await again.wait())["blocks_rewritten"] == 0

    run(go())


def test_zero_slots_are_sealed_again_as_zero_slots_without_data_writes():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        d = device(vol, [OLD])
        await d.trim(GROUP * BLOCK, GROUP * BLOCK)
        n = len(vol.log)
        rekey = Rekey(d, [OLD])
        rekey.install([NEW, OLD])
        assert (await rekey.wait())["blocks_rewritten"] == GROUP
        for op, off, _data in vol.log[n:]:  # a ZERO tag block and a trim: no data written
            assert op == "trim" or off == layout.tag_block(GROUP) * BLOCK, (op, off)
        assert await read_all(device(vol, [NEW], epoch=2)) == [ZERO] * NBLOCKS

    run(go())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["write", "zero", "trim"]),
            st.integers(0, NBLOCKS - 1),
            st.integers(1, 70),
            st.integers(0, 3),  # event-loop passes (of the sweep) before the request
        ),
        min_size=1,
        max_size=10,
    ),
    st.integers(0, 2**32),
)
def test_foreground_requests_racing_the_sweep_win(ops, seed):
    """Writes, zeroes and trims one after the other while the sweep runs (the volume
    below takes time per mutation, so they interleave with its steps): afterwards the
    device reads exactly the model and every written block is under the newest key."""
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)
    rng = random.Random(seed)

    async def go() -> None:
        model = await populate(vol)
        vol.delay = 0.0002
        d = device(vol, [OLD], epoch=2)
        rekey = Rekey(d, [OLD])
        rekey.install([NEW, OLD])
        for n, (kind, lo, count, passes) in enumerate(ops):
            for _ in range(passes + rng.randrange(2)):
                await asyncio.sleep(0)
            hi = min(NBLOCKS, lo + count)
            if kind == "write":
                new = [content(i, 1, bytes([0x61 + n % 26])) for i in range(lo, hi)]
                await d.write(lo * BLOCK, memoryview(b"".join(new)), False)
                model[lo:hi] = new
            elif kind == "zero":
                await d.write_zeroes(lo * BLOCK, (hi - lo) * BLOCK, False)
                model[lo:hi] = [ZERO] * (hi - lo)
            else:
                await d.trim(lo * BLOCK, (hi - lo) * BLOCK)
                model[lo:hi] = [ZERO] * (hi - lo)
        assert (await rekey.wait())["state"] == "done"
        assert await read_all(d) == model
        assert await read_all(device(vol, [NEW], epoch=3)) == model
        assert all(k in (None, 0) for k in key_indexes(vol, BlockCipher([NEW, OLD], VID)))

    run(go())


def test_a_crash_after_any_mutation_of_a_sweep_loses_nothing_and_a_new_sweep_completes():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def full() -> tuple[list[bytes], int]:
        model = await populate(vol)
        mark = len(vol.log)
        rekey = Rekey(device(vol, [OLD], epoch=2), [OLD])
        rekey.install([NEW, OLD])
        assert (await rekey.wait())["state"] == "done"
        return model, mark

    model, mark = run(full())
    assert len(vol.log) > mark + 4  # tag writes, data writes, trims

    async def after_crash(upto: int) -> None:
        v = vol.replay(upto)
        d = device(v, [NEW, OLD], epoch=3)  # the agent hands the new engine both keys
        assert await d.check_key()
        assert await read_all(d) == model, f"crash after mutation {upto}"
        rekey = Rekey(d, [NEW, OLD])
        rekey.start()
        assert (await rekey.wait())["state"] == "done"
        assert await read_all(device(v, [NEW], epoch=4)) == model, f"crash after {upto}"

    for upto in range(mark, len(vol.log) + 1):
        run(after_crash(upto))


def test_a_failing_volume_fails_the_sweep_and_the_same_keys_again_retry_it():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        model = await populate(vol)
        d = device(vol, [OLD], epoch=2)
        rekey = Rekey(d, [OLD])
        vol.fail_after = len(vol.log) + 3  # the replicas stop taking writes (a crash)
        rekey.install([NEW, OLD])
        got = await rekey.wait()
        assert got["state"] == "failed" and "crashed" in got["error"]
        vol.fail_after = None
        assert await read_all(d) == model
        assert rekey.install([NEW, OLD])["state"] == "running"  # the same keys: a retry
        assert (await rekey.wait())["state"] == "done"
        assert await read_all(device(vol, [NEW], epoch=3)) == model

    run(go())


def test_a_block_bad_on_the_read_copy_is_repaired_then_swept():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=3)

    async def go() -> None:
        model = await populate(vol)
        vol.copies[0][layout.data_block(5) * BLOCK + 7] ^= 0xFF  # replica 0's copy rots
        d = device(vol, [OLD], epoch=2)
        rekey = Rekey(d, [OLD])
        rekey.install([NEW, OLD])
        assert (await rekey.wait())["state"] == "done"
        assert d.counters["authentication_repaired"] == 1
        assert await read_all(device(vol, [NEW], epoch=3)) == model

    run(go())


def test_a_block_bad_everywhere_fails_the_sweep_naming_it():
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2)

    async def go() -> None:
        await populate(vol)
        for c in vol.copies:
            c[layout.data_block(5) * BLOCK + 7] ^= 0xFF
        rekey = Rekey(device(vol, [OLD], epoch=2), [OLD])
        rekey.install([NEW, OLD])
        got = await rekey.wait()
        assert got["state"] == "failed"
        assert "block 5 fails authentication" in got["error"]
        with pytest.raises(WrongState, match="failed"):  # dropping OLD: refused
            rekey.install([NEW])

    run(go())


def test_data_keys_refusals_and_idempotence():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        await populate(vol)
        vol.delay = 0.001  # the sweep takes a while
        d = device(vol, [OLD], epoch=2)
        rekey = Rekey(d, [OLD])
        before = d.cipher
        for keys, error, match in (
            ([], InvalidArgument, "1 to 8 keys"),
            ([NEW] * 2, InvalidArgument, "listed twice"),
            ([NEW[:31], OLD], InvalidArgument, "key #0 is 31 bytes"),
            ([bytes([k]) * 32 for k in range(9)], InvalidArgument, "not 9"),
            ([NEW], WrongState, "leaves out the newest key"),
        ):
            with pytest.raises(error, match=match):
                rekey.install(keys)
            assert d.cipher is before and rekey.state == "idle"
        assert rekey.install([OLD])["state"] == "idle"  # the same list: nothing
        assert d.cipher is before
        assert rekey.install([NEW, OLD])["state"] == "running"
        cipher = d.cipher
        assert rekey.install([NEW, OLD])["state"] == "running"  # again: a no-op
        assert d.cipher is cipher
        with pytest.raises(InvalidArgument, match="reordered"):
            rekey.install([OLD, NEW])
        with pytest.raises(WrongState, match="while the rekey sweep is running"):
            rekey.install([NEW])  # blocks may still be under OLD
        # a newer key in the middle of a sweep: it starts over toward NEWER
        assert rekey.install([NEWER, NEW, OLD])["keys"] == 3
        assert (await rekey.wait())["state"] == "done"
        assert set(key_indexes(vol, BlockCipher([NEWER, NEW, OLD], VID))) == {None, 0}
        got = rekey.install([NEWER])  # done: the older keys may go
        assert got["state"] == "done" and got["keys"] == 1
        assert d.cipher.volume_id == VID

    run(go())


def test_a_wrong_key_engine_refuses_new_keys():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        await populate(vol)
        d = device(vol, [NEWER], epoch=2)
        assert not await d.check_key()
        with pytest.raises(WrongState, match="key check failed"):
            Rekey(d, [NEWER]).install([NEW, NEWER])

    run(go())


def test_a_revert_after_done_sweeps_again():
    vol = MemoryVolume(layout.physical_size(LOGICAL))
    layout_version = [0]

    async def go() -> None:
        model = await populate(vol)
        saved = [bytearray(c) for c in vol.copies]  # a snapshot, under OLD
        d = device(vol, [OLD], epoch=2, layout_version=lambda: layout_version[0])
        rekey = Rekey(d, [OLD], layout_version=lambda: layout_version[0])
        rekey.install([NEW, OLD])
        assert (await rekey.wait())["state"] == "done"
        vol.copies = saved  # the revert: the content is the snapshot's again
        layout_version[0] += 1
        assert rekey.status()["state"] == "running"
        assert (await rekey.wait())["state"] == "done"
        assert await read_all(device(vol, [NEW], epoch=3)) == model

    run(go())


def test_the_control_op_decodes_keys_and_never_echoes_them(caplog):
    vol = MemoryVolume(layout.physical_size(LOGICAL))
    b64 = [base64.b64encode(k).decode() for k in (NEW, OLD)]

    async def go() -> None:
        await populate(vol)
        rekey = Rekey(device(vol, [OLD], epoch=2), [OLD])
        ask = {"op": "data-keys", "keys": b64}
        with pytest.raises(InvalidArgument, match="not encrypted"):
            await control.handle(None, ask)  # type: ignore[arg-type]
        for bad, match in (
            ({"op": "data-keys"}, "list of base64"),
            ({"op": "data-keys", "keys": "abc"}, "list of base64"),
            ({"op": "data-keys", "keys": ["***", b64[1]]}, "key #0 is not base64"),
            ({"op": "data-keys", "keys": [b64[0][:-4], b64[1]]}, "key #0 is 30 bytes"),
        ):
            with pytest.raises(InvalidArgument, match=match):
                await control.handle(None, bad, rekey=rekey)  # type: ignore[arg-type]
        with caplog.at_level(logging.DEBUG):
            got = await control.handle(None, ask, rekey=rekey)  # type: ignore[arg-type]
            assert set(got["rekey"]) == {
                "state", "keys", "groups_done", "groups_total", "blocks_rewritten", "error"
            }  # fmt: skip
            await rekey.wait()
        text = repr(got) + repr(rekey) + caplog.text
        for k in (NEW, OLD):
            assert base64.b64encode(k).decode() not in text and k.hex() not in text

    run(go())


def test_a_read_only_attach_rewrites_nothing():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        await populate(vol)
        n = len(vol.log)
        vol.read_only = True  # type: ignore[misc]
        rekey = Rekey(device(vol, [OLD], epoch=2), [OLD])
        rekey.install([NEW, OLD])
        got = await rekey.wait()
        assert got["state"] == "failed" and "read-only" in got["error"]
        assert len(vol.log) == n

    run(go())


def test_closing_stops_the_sweep_between_groups_and_a_new_engine_finishes_it():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        model = await populate(vol)
        vol.delay = 0.002
        rekey = Rekey(device(vol, [OLD], epoch=2), [OLD])
        rekey.install([NEW, OLD])
        while not rekey._in_group:  # group 0 is being rewritten
            await asyncio.sleep(0.0005)
        await rekey.close()
        assert rekey._task is not None and rekey._task.done()
        assert rekey.groups_done == 1  # group 0 finished, nothing more
        keys = key_indexes(vol, BlockCipher([NEW, OLD], VID))
        assert set(keys[:GROUP]) <= {None, 0} and 1 in keys[GROUP:]
        vol.delay = 0
        again = Rekey(device(vol, [NEW, OLD], epoch=3), [NEW, OLD])
        again.start()
        assert (await again.wait())["state"] == "done"
        assert await read_all(device(vol, [NEW], epoch=4)) == model

    run(go())


def test_a_revert_after_done_refuses_dropping_the_old_key_until_swept_again():
    vol = MemoryVolume(layout.physical_size(LOGICAL))
    layout_version = [0]

    async def go() -> None:
        model = await populate(vol)
        saved = [bytearray(c) for c in vol.copies]
        d = device(vol, [OLD], epoch=2, layout_version=lambda: layout_version[0])
        rekey = Rekey(d, [OLD], layout_version=lambda: layout_version[0])
        rekey.install([NEW, OLD])
        assert (await rekey.wait())["state"] == "done"
        vol.copies = saved
        layout_version[0] += 1  # nobody asked the status since
        with pytest.raises(WrongState, match="running"):
            rekey.install([NEW])
        assert (await rekey.wait())["state"] == "done"
        assert rekey.install([NEW])["keys"] == 1
        assert await read_all(d) == model

    run(go())


class RekeyCrashMachine(CrashMachine):
    """The encrypting device's crash state machine (test_encrypted_device_crashes.py) with
    rotations among its steps: a new key and a sweep, which may be cut short after any
    number of its mutations (then the engine crashes, and a new one gets every key, or it
    goes on), and once a sweep is done the older keys dropped. The machine's reads check
    that every block still reads its acknowledged content (or a cut-short write's)."""

    def __init__(self) -> None:
        self.keys = [CRASH_KEY]
        self.fresh = 0
        super().__init__()

    def _device(self) -> EncryptedDevice:
        return EncryptedDevice(self.vol, BlockCipher(self.keys, VID), self.epoch, copies=self.vol)

    @rule(after=st.one_of(st.none(), st.integers(0, 12)), crash=st.booleans())
    def rotate(self, after: int | None, crash: bool) -> None:
        if len(self.keys) < 8:
            self.fresh += 1
            new = [bytes([self.fresh]) * 32, *self.keys]
        else:
            new = self.keys  # as many as may be: sweep toward the newest again

        async def go() -> dict:
            rekey = Rekey(self.dev, self.keys)
            self.vol.fail_after = None if after is None else len(self.vol.log) + after
            try:
                rekey.install(new)
                if new == self.keys:
                    rekey.start()
                return await rekey.wait()
            finally:
                self.vol.fail_after = None

        got = run(go())
        self.keys = new
        if got["state"] == "done":
            cipher = BlockCipher(self.keys, VID)
            assert all(k in (None, 0) for k in crash_key_indexes(self.vol, cipher)), got
            self.keys = self.keys[:1]  # the older keys may go
            self.dev.cipher = BlockCipher(self.keys, VID)
        else:
            assert got["state"] == "failed", got
            if crash:
                self.restart()


def crash_key_indexes(vol: MemoryVolume, cipher: BlockCipher) -> list[int | None]:
    c = vol.copies[0]
    out = []
    for i in range(CRASH_NBLOCKS):
        d = layout.data_block(i) * BLOCK
        t = layout.tag_block(i) * BLOCK + layout.tag_offset(i)
        out.append(cipher.key_index(i, c[d : d + BLOCK], c[t : t + ENTRY]))
    return out


RekeyCrashMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_rotations_among_crashes_lose_nothing = RekeyCrashMachine.TestCase


def test_a_sweep_cut_short_over_a_write_cut_short_keeps_the_acknowledged_content():
    """Block 0: A acknowledged under OLD; B cut short after its tag write (crash); then the
    sweep's rewrite of A cut short after its tag write (crash). The newest slot (B's)
    never authenticated: the sweep's new slot must not go over A's, the only one that does."""
    vol = MemoryVolume(layout.physical_size(LOGICAL))
    a = b"A" * BLOCK

    async def go() -> None:
        await device(vol, [OLD]).write(0, memoryview(a), False)
        vol.fail_after = len(vol.log) + 1  # B's tag block lands, its data does not
        with pytest.raises(CargoholdError):
            await device(vol, [OLD], epoch=2).write(0, memoryview(b"B" * BLOCK), False)
        d = device(vol, [NEW, OLD], epoch=3)
        assert await d.read(0, BLOCK) == a
        rekey = Rekey(d, [NEW, OLD])
        vol.fail_after = len(vol.log) + 1  # the sweep's tag block lands, its data does not
        rekey.start()
        assert (await rekey.wait())["state"] == "failed"
        vol.fail_after = None
        again = device(vol, [NEW, OLD], epoch=4)
        assert await again.read(0, BLOCK) == a
        rekey = Rekey(again, [NEW, OLD])
        rekey.start()
        assert (await rekey.wait())["state"] == "done"
        assert await device(vol, [NEW], epoch=5).read(0, BLOCK) == a

    run(go())


def test_the_sweep_leaves_the_tag_cache_to_the_consumer():
    vol = MemoryVolume(layout.physical_size(LOGICAL))

    async def go() -> None:
        model = await populate(vol)
        d = device(vol, [OLD], epoch=2)
        await d.read(2 * GROUP * BLOCK, BLOCK)  # the consumer's group
        rekey = Rekey(d, [OLD])
        rekey.install([NEW, OLD])
        assert (await rekey.wait())["state"] == "done"
        assert list(d._cache) == [2]
        assert await read_all(d) == model

    run(go())
