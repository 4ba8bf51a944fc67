"""The merge of a start in doubt (``engine/merge.py``, ``merge_plan.py``): before the source
is marked current it takes every block changed above the common generation from the current
replica whose record of it is newest. The case it was built for: a write failed on one
replica after that replica took its number, the others stored it and it was acknowledged,
then every process stopped; the replica that failed it ties with the others on ``seen`` and
is the one the source order picks (here the local one). Before the merge the start took
every block from it and the acknowledged write was taken back.

Real replica servers in this process (test_start_doubt.py's ``Cluster``); the failed write
is a real failure of the store's data write (ENOSPC) on that replica alone."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cargohold.constants import BLOCK_SIZE
from cargohold.engine import merge
from cargohold.engine import start_policy as policy
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.errors import CargoholdError
from cargohold.replica.client import ReplicaClient
from cargohold.store.layer import Layer
from tests.unit.engine.test_start_doubt import (
    SIZE,
    A,
    Cluster,
    _until,
    count_marks,
    three_replicas,
    written,
)

W = b"W" * BLOCK_SIZE


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    async with three_replicas(tmp_path) as cl:
        yield cl


async def claimed(
    cl: Cluster, i: int, block: int, data: bytes, generation: int, mp: pytest.MonkeyPatch
) -> None:
    """A write at ``generation`` to replica ``i`` alone whose data write fails (the disk
    full): the replica takes the number, records the block at it, stores nothing."""
    root = f"/n{i}/"  # the replica server's disk: tmp_path / f"n{i}"

    def full(self: Layer, lba: int, buf: Any) -> None:
        if root in self.directory:
            raise OSError(errno.ENOSPC, "No space left on device")
        raise AssertionError("only the failing replica is written to here")

    c = await ReplicaClient.connect("127.0.0.1", cl.servers[i].port)
    try:
        await c.open(f"r{i}", 1)
        with mp.context() as m:
            for name in ("pwrite", "pwritev"):
                m.setattr(Layer, name, full)
            with pytest.raises(CargoholdError, match="space"):
                await c.write(block * BLOCK_SIZE, data, generation=generation)
    finally:
        await c.close()


async def stored(cl: Cluster, i: int, block: int, data: bytes, generation: int) -> None:
    c = await ReplicaClient.connect("127.0.0.1", cl.servers[i].port)
    try:
        await c.open(f"r{i}", 1)
        await c.write(block * BLOCK_SIZE, data, generation=generation)
        await c.flush()
    finally:
        await c.close()


async def test_the_acknowledged_write_survives_when_the_replica_that_failed_it_is_the_source(
    cluster, monkeypatch
):
    gen = await written(cluster)
    # gen + 1: a write to block 1 in flight on every replica when everything stopped: each
    # took its number and none completed it (every replica's generation stays at gen)
    for i in range(3):
        await claimed(cluster, i, 1, b"x" * BLOCK_SIZE, gen + 1, monkeypatch)
    # gen + 2: the write to block 3 that r1 and r2 stored (acknowledged: r0 was dropped)
    await stored(cluster, 1, 3, W, gen + 2)
    await stored(cluster, 2, 3, W, gen + 2)
    await claimed(cluster, 0, 3, W, gen + 2, monkeypatch)
    for i in range(3):
        info, _ = await cluster.state(i, 1)
        assert (info["generation"], info["seen"]) == (gen, gen + 2), (i, info)
    cluster.specs[0] = ReplicaSpec("r0", "127.0.0.1", cluster.servers[0].port, local=True)
    marks = count_marks(monkeypatch)
    vol = cluster.volume(2)
    await vol.start()
    # the source order alone (what the start took every block from) picks r0, which lacks W
    assert marks == [cluster.servers[0].port]
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.WO, Mode.WO]
    assert policy.sources(list(vol.links))[0] is vol.links[0]
    assert bytes(await vol.read(3 * BLOCK_SIZE, BLOCK_SIZE)) == W  # at once, from r0
    assert vol.counters["merged_blocks"] == 1
    assert vol.status()["counters"]["merged_blocks"] == 1
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    await vol.close()
    want = A * 8 + bytes(SIZE - 8 * BLOCK_SIZE)
    want = want[: 3 * BLOCK_SIZE] + W + want[4 * BLOCK_SIZE :]
    for i in range(3):
        info, data = await cluster.state(i, 3)
        assert data == want, f"r{i}"  # block 1: the failed write never shows
        assert info["generation"] == info["seen"] == gen + 2, (i, info)


@pytest.mark.parametrize("window", [merge.WINDOW, 3 * BLOCK_SIZE])  # CHANGED per window
async def test_a_newer_trim_elsewhere_is_merged_as_zeros_and_the_source_keeps_its_newer(
    cluster, monkeypatch, window
):
    """r0 saw the most (its gen + 5 on block 2) and is the source; r2's trim of block 6 at
    gen + 4 is newer than r0's write of it at gen + 2: block 6 reads zeros. r1's write of
    blocks 2-3 at gen + 3 is older than r0's block 2 and newer than anything of block 3:
    block 3 comes from r1, block 2 stays r0's. (Every number above gen + 1 leaves a gap:
    every replica stays complete through gen, all current.)"""
    monkeypatch.setattr(merge, "WINDOW", window)
    gen = await written(cluster)
    await stored(cluster, 0, 6, b"o" * BLOCK_SIZE, gen + 2)
    await stored(cluster, 1, 2, b"r" * 2 * BLOCK_SIZE, gen + 3)  # blocks 2-3, a window edge
    await stored(cluster, 0, 2, b"q" * BLOCK_SIZE, gen + 5)
    c = await ReplicaClient.connect("127.0.0.1", cluster.servers[2].port)
    try:
        await c.open("r2", 1)
        await c.trim(6 * BLOCK_SIZE, BLOCK_SIZE, generation=gen + 4)
    finally:
        await c.close()
    marks = count_marks(monkeypatch)
    vol = cluster.volume(2)
    await vol.start()
    assert marks == [cluster.servers[0].port] and vol.counters["merged_blocks"] == 2
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    await vol.close()
    want = bytearray(A * 8 + bytes(SIZE - 8 * BLOCK_SIZE))
    want[2 * BLOCK_SIZE : 3 * BLOCK_SIZE] = b"q" * BLOCK_SIZE
    want[3 * BLOCK_SIZE : 4 * BLOCK_SIZE] = b"r" * BLOCK_SIZE
    want[6 * BLOCK_SIZE : 7 * BLOCK_SIZE] = bytes(BLOCK_SIZE)
    for i in range(3):
        _, data = await cluster.state(i, 3)
        assert data == want, f"r{i}"


async def test_a_peer_that_cannot_answer_is_left_out_and_the_start_goes_on(cluster, monkeypatch):
    gen = await written(cluster)
    await stored(cluster, 0, 4, b"p" * BLOCK_SIZE, gen + 3)
    await stored(cluster, 1, 5, b"s" * BLOCK_SIZE, gen + 2)
    real = ReplicaClient.changed_generations

    async def broken(self: ReplicaClient, *a: Any, **kw: Any) -> Any:
        if self.where.endswith(f":{cluster.servers[1].port}"):
            raise CargoholdError("I/O error")
        return await real(self, *a, **kw)

    monkeypatch.setattr(ReplicaClient, "changed_generations", broken)
    vol = cluster.volume(2)
    await vol.start()
    assert vol.links[0].mode is Mode.RW and vol.counters["merged_blocks"] == 0
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    await vol.close()
    _, data = await cluster.state(1, 3)
    assert data[5 * BLOCK_SIZE : 6 * BLOCK_SIZE] == A  # r1's own newer one: not merged
    assert data[4 * BLOCK_SIZE : 5 * BLOCK_SIZE] == b"p" * BLOCK_SIZE
