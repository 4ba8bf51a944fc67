"""Races of the encrypting device's writes (review of the encrypted write path, all of it
read with one question: can an acknowledged write be lost, a block made unreadable, a
tag block written over by an older copy, a nonce reused, an NBD request answered twice or
never?). Over the in-memory twin of the replicated volume whose ordered writes wait at a
gate the test opens (``GatedVolume``), so that writes are held between putting their tags
into a cached tag block and queueing its snapshot, as a hold or a rebuild window holds
them in the engine. Both cipher paths (tests/support/cipher_paths.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK
from cargohold.errors import ReplicaIOError
from cargohold.frontend.encrypted_device import EncryptedDevice
from tests.support.done_recorder import Done
from tests.support.memory_volume import MemoryVolume

KEY = bytes(range(32))
VID = bytes(range(16))
LOGICAL = 4 * layout.GROUP_BYTES


class GatedVolume(MemoryVolume):
    """``write_ordered`` waits, before it queues (``ready``), until the test opens its
    call's gate (``open(n)``: the n-th call); a call in ``failing`` then fails as a tag
    write refused by every replica does: its snapshot taken, nothing applied."""

    def __init__(self, size: int, n: int = 1) -> None:
        super().__init__(size, n)
        self.calls = 0
        self.gates: dict[int, asyncio.Event] = {}
        self.failing: set[int] = set()
        self.gated = False

    def _gate(self, n: int) -> asyncio.Event:
        return self.gates.setdefault(n, asyncio.Event())

    def open(self, n: int) -> None:
        self._gate(n).set()

    async def write_ordered(self, writes: list[tuple[int, Any]], ready: Any = None) -> None:
        n = self.calls
        self.calls += 1
        if self.gated:
            await self._gate(n).wait()
        if n in self.failing:
            ready(True)
            raise ReplicaIOError(f"gated volume: ordered write {n} refused")
        await super().write_ordered(writes, ready)


def device(vol: MemoryVolume, epoch: int = 1) -> EncryptedDevice:
    return EncryptedDevice(vol, BlockCipher(KEY, VID), epoch)


def content(i: int, tag: bytes) -> bytes:
    return (tag + b"%07d" % i) * (BLOCK // 8)


async def until(what: Any, deadline: float = 5.0) -> None:
    """Poll ``what()`` until true (one loop turn at a time), failing at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not what():
        assert loop.time() < end, "timed out waiting"
        await asyncio.sleep(0)


@pytest.mark.parametrize("failed_path", ["task", "nowait"])
def test_a_failed_tag_write_never_drops_a_tag_block_another_write_has_changed(failed_path):
    """C puts its tag into the cached tag block of group 0 and waits (a hold) before its
    snapshot is queued; A's write of another block of the group fails (its tag block
    refused); D, a third block of the group, starts after. The cached copy must stay the
    one C and D both change: had A's failure dropped it, D would load the group's older
    tag block from the replicas, and whichever of C's and D's snapshots landed last would
    take the other's acknowledged tag with it (its block then fails authentication on
    every replica)."""
    vol = GatedVolume(layout.physical_size(LOGICAL))
    x, y, z = 1, 2, 3  # C, A, D: three blocks of group 0

    async def go() -> None:
        d = device(vol)
        for i in (x, y, z):
            await d.write(i * BLOCK, memoryview(content(i, b"o")), False)
        vol.gated = True
        base = vol.calls
        c = asyncio.ensure_future(d.write(x * BLOCK, memoryview(content(x, b"C")), False))
        await until(lambda: vol.calls == base + 1)  # C's tag put, its queueing held
        if failed_path == "task":
            vol.failing.add(base + 1)
            a = asyncio.ensure_future(d.write(y * BLOCK, memoryview(content(y, b"A")), False))
            await until(lambda: vol.calls == base + 2)
            vol.open(base + 1)
            with pytest.raises(ReplicaIOError):
                await a
            dcall = base + 2
        else:
            vol.fail_after = len(vol.log)  # its tag block's write fails, nothing after it
            done = Done(started=False)
            assert d.write_nowait(y * BLOCK, memoryview(content(y, b"A")), False, done)
            done.returned = True
            assert isinstance(await done.wait(), ReplicaIOError)
            vol.fail_after = None
            dcall = base + 1
        dw = asyncio.ensure_future(d.write(z * BLOCK, memoryview(content(z, b"D")), False))
        await until(lambda: vol.calls == dcall + 1)
        vol.open(base)  # C's snapshot, then D's
        await c
        vol.open(dcall)
        await dw
        vol.gated = False
        for reader in (d, device(vol, epoch=2)):  # this engine, and the next one
            got = await reader.read(0, 4 * BLOCK)
            assert got[x * BLOCK : (x + 1) * BLOCK] == content(x, b"C")
            assert got[z * BLOCK : (z + 1) * BLOCK] == content(z, b"D")
            assert got[y * BLOCK : (y + 1) * BLOCK] in (content(y, b"o"), content(y, b"A"))
        assert not d._claimed

    asyncio.run(go())


def test_no_nonce_is_sealed_twice_on_any_write_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every (data key, salt, version, block) sealed, data or ZERO tag, by every cipher an
    engine uses (a data-key rotation installs a new one) is recorded over a random
    workload of every write path together: without a task (and falling back), awaited,
    FUA, TRIM, WRITE_ZEROES, a repair's write-back, a rekey sweep, restarts; none may
    repeat (docs/encryption.md, "the nonce argument")."""
    from random import Random

    from cargohold.frontend.rekey_sweep import Rekey
    from tests.support.done_recorder import Done

    sealed: set[tuple[bytes, bytes, int, int]] = set()
    seal_into, zero_tag = BlockCipher.seal_into, BlockCipher.zero_tag

    def note(c: BlockCipher, first: int, n: int, version: int) -> None:
        for i in range(first, first + n):
            at = (c._keys[0], c.salt, version, i)
            assert at not in sealed, f"nonce reused: block {i} at version {version:#x}"
            sealed.add(at)

    def checked_seal_into(c: BlockCipher, first: int, version: int, plain: Any, *a: Any) -> bytes:
        note(c, first, len(memoryview(plain).cast("B")) // BLOCK, version)
        return seal_into(c, first, version, plain, *a)

    def checked_zero_tag(c: BlockCipher, index: int, version: int) -> bytes:
        note(c, index, 1, version)
        return zero_tag(c, index, version)

    monkeypatch.setattr(BlockCipher, "seal_into", checked_seal_into)
    monkeypatch.setattr(BlockCipher, "zero_tag", checked_zero_tag)
    new_key = bytes(range(100, 132))
    vol = MemoryVolume(layout.physical_size(LOGICAL), n=2, delay=0.0005)
    nblocks = LOGICAL // BLOCK
    rnd = Random(1234)

    async def workload(d: EncryptedDevice, steps: int) -> None:
        jobs: list[Any] = []
        for _ in range(steps):
            lo = rnd.choice([rnd.randrange(nblocks), 63, 64, 127, 128])
            hi = min(nblocks, lo + rnd.choice([1, 2, 3, 64, 65, 130]))
            data = memoryview(bytes([rnd.randrange(1, 256)]) * ((hi - lo) * BLOCK))
            kind = rnd.choice(["nowait", "nowait", "task", "fua", "trim", "zeroes"])
            if kind == "nowait":
                done = Done()
                if d.write_nowait(lo * BLOCK, data, False, done):
                    jobs.append(done.wait())
                    continue
                kind = "task"
            if kind in ("task", "fua"):
                jobs.append(d.write(lo * BLOCK, data, kind == "fua"))
            elif kind == "trim":
                jobs.append(d.trim(lo * BLOCK, (hi - lo) * BLOCK))
            else:
                jobs.append(d.write_zeroes(lo * BLOCK, (hi - lo) * BLOCK, False))
            if rnd.random() < 0.3:
                await asyncio.sleep(0.001)
        for r in await asyncio.gather(*jobs, return_exceptions=True):
            assert r is None, r

    async def go() -> None:
        d = EncryptedDevice(vol, BlockCipher(KEY, VID), 1, copies=vol)
        await workload(d, 60)
        before = len(sealed)
        # a block bad on one copy: read from the other and written back (no sealing)
        p = layout.data_block(5) * BLOCK
        vol.copies[0][p] ^= 1
        await d.read(0, 8 * BLOCK)
        assert d.counters["authentication_repaired"] == 1
        assert len(sealed) == before
        rekey = Rekey(d, [KEY])  # a rotation, swept while the workload goes on
        rekey.install([new_key, KEY])
        await workload(d, 60)
        assert (await asyncio.wait_for(rekey.wait(), 30))["state"] == "done"
        assert d.counters["rekey_rewritten_blocks"] > 0
        for epoch in (2, 3):  # restarts: a new salt each
            d = EncryptedDevice(vol, BlockCipher([new_key], VID), epoch, copies=vol)
            assert await d.check_key()
            await workload(d, 40)

    asyncio.run(go())
    assert len(sealed) > 1000
