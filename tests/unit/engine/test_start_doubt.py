"""An engine's start when the current replicas may differ above their generation
(``engine/start_policy.py``): after a power loss (the replica's OPEN reply says
``power_loss``) or a write that failed on every replica after each took its number (each
replica saw a mutation above its generation). Exactly one current replica stays RW, marked
current before any I/O; the others are WO and rebuilt from it, and afterwards every replica
holds the source's bytes — also in blocks that only a target changed above its generation.
Without doubt the start is what it always was: every current replica RW, no MARK_CURRENT.
The manager's record (``require``) is relaxed only when every replica answered and every
current one lost power. Before the source is marked, it takes every block changed above
the generation from the current replica whose record of it is newest (the merge:
test_start_merge.py has its cases).

Real replica servers in this process, read back directly (not through the engine). A power
loss is the OPEN reply's ``power_loss`` flag (the store sets it, store/ tests check that);
the different content above the generation is made by writes sent around the engine with a
gap in their generations, which leave the replica's generation where it was, as a crash
leaves it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.errors import ReplicaIOError
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings
from cargohold.store.layer import Layer
from tests.support.processes import replica_server_in_process

SIZE = 4 * MIB
A = b"a" * BLOCK_SIZE


async def _until(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


class Cluster:
    """``n`` replica servers, one replica ``r<i>`` of the volume each."""

    def __init__(self, servers: list[Any]) -> None:
        self.servers = servers
        self.specs = [ReplicaSpec(f"r{i}", "127.0.0.1", s.port) for i, s in enumerate(servers)]

    def volume(self, epoch: int, require: tuple[int, int] = (0, 0), **kw: Any) -> Volume:
        return Volume("v", self.specs, epoch=epoch, settings=EngineSettings(**kw), require=require)

    async def around(self, i: int, epoch: int, block: int, data: bytes, gap: int) -> None:
        """A write to replica ``i`` alone, ``gap`` generations above what it saw: its
        generation (complete through) stays, its content above it changes."""
        c = await ReplicaClient.connect("127.0.0.1", self.servers[i].port)
        try:
            info = await c.open(f"r{i}", epoch)
            await c.write(block * BLOCK_SIZE, data, generation=info["seen"] + gap)
            await c.flush()
        finally:
            await c.close()

    async def state(self, i: int, epoch: int) -> tuple[dict[str, Any], bytes]:
        """Replica ``i``'s INFO and its whole content, from its server."""
        c = await ReplicaClient.connect("127.0.0.1", self.servers[i].port)
        try:
            info = await c.open(f"r{i}", epoch)
            return info, bytes(await c.read(0, SIZE))
        finally:
            await c.close()


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    async with three_replicas(tmp_path) as cl:
        yield cl


@contextlib.asynccontextmanager
async def three_replicas(tmp_path) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    """Three replica servers under ``tmp_path`` (``n0``..``n2``), one replica each."""
    servers = [await replica_server_in_process(tmp_path / f"n{i}") for i in range(3)]
    try:
        for i, s in enumerate(servers):
            c = await ReplicaClient.connect("127.0.0.1", s.port)
            await c.create(f"r{i}", SIZE)
            await c.close()
        yield Cluster(servers)
    finally:
        for s in servers:
            await s.stop()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def power_loss(monkeypatch: pytest.MonkeyPatch, replicas: set[str]) -> None:
    """OPEN replies of ``replicas`` say their machine crashed (what the store reports)."""
    real = ReplicaClient.open

    async def open_(self: ReplicaClient, replica: str, epoch: int, *a: Any, **kw: Any) -> Any:
        info = await real(self, replica, epoch, *a, **kw)
        if replica in replicas:
            info["power_loss"] = True
        return info

    monkeypatch.setattr(ReplicaClient, "open", open_)


def count_marks(monkeypatch: pytest.MonkeyPatch, fail: set[int] | None = None) -> list[int]:
    """The ports of the replicas MARK_CURRENT went to, in order; to those in ``fail`` it
    fails (a replica server that errs)."""
    calls: list[int] = []
    real = ReplicaClient.mark_current

    async def mark(self: ReplicaClient, *a: Any, **kw: Any) -> int:
        port = int(self.where.rsplit(":", 1)[1])
        calls.append(port)
        if fail and port in fail:
            raise ReplicaIOError("mark current: I/O error")
        return await real(self, *a, **kw)

    monkeypatch.setattr(ReplicaClient, "mark_current", mark)
    return calls


async def written(cl: Cluster, blocks: int = 8) -> int:
    """Epoch 1 writes ``blocks`` blocks of A to every replica and stops: -> its generation."""
    vol = cl.volume(1)
    await vol.start()
    for b in range(blocks):
        await vol.write(b * BLOCK_SIZE, memoryview(A), False)
    await vol.flush()
    gen = vol.gen
    await vol.close()
    return gen


async def test_in_doubt_one_source_stays_rw_the_others_are_rebuilt_to_its_bytes(
    cluster, monkeypatch
):
    gen = await written(cluster)
    # above generation `gen`, each replica got something of its own (a crash's leftovers):
    # r1 block 5 (only r1 changed it: the merge gives it to the source), r2 block 6
    await cluster.around(1, 1, 5, b"1" * BLOCK_SIZE, gap=2)
    await cluster.around(2, 1, 6, b"2" * BLOCK_SIZE, gap=3)
    power_loss(monkeypatch, {"r0"})
    marks = count_marks(monkeypatch)
    vol = cluster.volume(2)
    await vol.start()
    # no await since start returned: the rebuilds have not run yet
    assert [lk.mode for lk in vol.links] == [Mode.WO, Mode.WO, Mode.RW]  # r2 saw the most
    assert marks == [cluster.servers[2].port]
    assert vol.gen == gen + 3 and vol.links[2].generation == gen + 3
    assert vol.current() == (1, gen + 3)  # what the replicas hold: the next engine meets it
    assert vol.status()["replicas"][0]["power_loss"] is True  # until it is rebuilt
    await vol.write(7 * BLOCK_SIZE, memoryview(b"n" * BLOCK_SIZE), False)  # served at once
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    assert not any("power_loss" in r for r in vol.status()["replicas"])
    assert vol.counters["rebuilds"] == 2 and vol.counters["power_loss_starts"] == 0
    assert vol.counters["merged_blocks"] == 1  # r1's block 5, the newest record of it
    assert vol.counters["rebuild_diverged_blocks"] == 0  # the delta rebuilds had it all
    assert vol.robustness() == "healthy"
    cur = vol.current()
    await vol.close()
    want = bytearray(A * 8 + bytes(SIZE - 8 * BLOCK_SIZE))
    want[5 * BLOCK_SIZE : 6 * BLOCK_SIZE] = b"1" * BLOCK_SIZE
    want[6 * BLOCK_SIZE : 7 * BLOCK_SIZE] = b"2" * BLOCK_SIZE
    want[7 * BLOCK_SIZE : 8 * BLOCK_SIZE] = b"n" * BLOCK_SIZE
    for i in range(3):
        info, data = await cluster.state(i, 3)
        assert data == want, f"r{i}"
        assert info["generation"] == info["seen"] == gen + 4, (i, info)
        assert (info["history"][-1][0], info["generation"]) >= cur


async def test_a_write_that_failed_everywhere_no_longer_faults_the_next_engine(
    cluster, monkeypatch
):
    """The write took its number on every replica and failed on each (the disk full when
    its data was written): every replica saw a mutation above its generation. The next
    engine's first write was a gap on every replica, all were dropped, the volume faulted."""
    gen = await written(cluster)
    vol = cluster.volume(2)
    await vol.start()

    def full(self: Layer, lba: int, buf: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        for name in ("pwrite", "pwritev"):
            m.setattr(Layer, name, full)
        with pytest.raises(ReplicaIOError):
            await vol.write(0, memoryview(b"x" * BLOCK_SIZE), False)
    assert vol.robustness() == "faulted"
    await vol.close()
    for i in range(3):
        info, _ = await cluster.state(i, 2)
        assert (info["generation"], info["seen"]) == (gen, gen + 1), info  # the gap
    vol = cluster.volume(3, require=(1, gen))
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.WO, Mode.WO]  # alike: the first
    assert vol.links[0].generation == vol.gen == gen + 1  # marked current past the gap
    await vol.write(0, memoryview(b"y" * BLOCK_SIZE), False)
    assert vol.robustness() != "faulted" and vol.fenced is None
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    assert vol.current() == (3, gen + 2)
    await vol.close()
    for i in range(3):
        info, data = await cluster.state(i, 4)
        assert data[:BLOCK_SIZE] == b"y" * BLOCK_SIZE and data[BLOCK_SIZE : 8 * BLOCK_SIZE] == A * 7
        assert info["generation"] == info["seen"] == gen + 2, info


async def test_not_in_doubt_the_current_replicas_are_rw_and_none_is_marked(cluster, monkeypatch):
    gen = await written(cluster)
    await cluster.around(2, 1, 3, b"s" * BLOCK_SIZE, gap=1)  # r2 ahead: r0, r1 stale
    marks = count_marks(monkeypatch)
    vol = cluster.volume(2)
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.WO, Mode.WO, Mode.RW]
    assert marks == [] and vol.gen == gen + 1 and vol.current() == (1, gen + 1)
    await vol.close()


async def test_all_current_alike_and_not_in_doubt_all_rw(cluster, monkeypatch):
    gen = await written(cluster)
    marks = count_marks(monkeypatch)
    vol = cluster.volume(2, require=(1, gen))
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.RW] * 3
    assert marks == [] and vol.gen == gen and vol.current() == (1, gen)
    await vol.close()


async def test_a_source_that_cannot_be_marked_is_dropped_and_the_next_tried(cluster, monkeypatch):
    gen = await written(cluster)
    power_loss(monkeypatch, {"r0", "r1", "r2"})
    cluster.specs[1] = ReplicaSpec("r1", "127.0.0.1", cluster.servers[1].port, local=True)
    marks = count_marks(monkeypatch, fail={cluster.servers[1].port})
    vol = cluster.volume(2, min_replicas=1)
    await vol.start()
    ports = [s.port for s in cluster.servers]
    assert marks == [ports[1], ports[0]]  # the local one first; it failed: the next
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.ERR, Mode.WO]
    assert "marking it current failed" in vol.links[1].error
    assert vol.gen == gen
    await vol.close()

    marks = count_marks(monkeypatch, fail=set(ports))
    vol = cluster.volume(3)
    with pytest.raises(ReplicaIOError, match="none of the current replicas could be marked"):
        await vol.start()
    assert all(lk.client is None for lk in vol.links)


async def test_a_single_replica_in_doubt_is_just_marked_current(tmp_path, monkeypatch):
    s = await replica_server_in_process(tmp_path / "n0")
    try:
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        await c.create("r0", SIZE)
        await c.close()
        cl = Cluster([s])
        gen = await written(cl)
        await cl.around(0, 1, 2, b"z" * BLOCK_SIZE, gap=2)
        marks = count_marks(monkeypatch)
        vol = cl.volume(2, require=(1, gen))
        await vol.start()
        assert marks == [s.port] and vol.links[0].mode is Mode.RW and vol.gen == gen + 2
        recorded = vol.current()  # what the manager records: the replica must meet it
        await vol.close()  # before any write
        vol = cl.volume(3, require=recorded)
        await vol.start()
        assert marks == [s.port]  # not in doubt any more
        await vol.write(0, memoryview(b"q" * BLOCK_SIZE), False)
        assert vol.robustness() == "healthy" and vol.current() == (3, gen + 3)
        await vol.close()
    finally:
        await s.stop()


async def test_require_is_relaxed_only_when_all_answered_and_every_current_one_lost_power(
    cluster, monkeypatch, caplog
):
    gen = await written(cluster)
    need = (1, gen + 10)  # the manager saw writes that no replica kept: lost with the power
    # one current replica did not lose power: what the manager saw may be on it... refused
    power_loss(monkeypatch, {"r0", "r1"})
    vol = cluster.volume(2, require=need)
    with pytest.raises(ReplicaIOError, match="refusing to start: newer data exists"):
        await vol.start()
    monkeypatch.undo()
    # all lost power, but one replica did not answer: it may hold the newer data
    power_loss(monkeypatch, {"r0", "r1", "r2"})
    real = cluster.specs[2]
    cluster.specs[2] = ReplicaSpec("r2", "127.0.0.1", unused_port())
    vol = cluster.volume(3, require=need)
    with pytest.raises(ReplicaIOError, match="refusing to start: newer data exists"):
        await vol.start()
    cluster.specs[2] = real
    # every replica answered, every current one lost power: accepted, loudly, counted
    caplog.set_level(logging.WARNING, "cargohold.engine")
    vol = cluster.volume(4, require=need)
    await vol.start()
    assert vol.counters["power_loss_starts"] == 1
    assert vol.status()["counters"]["power_loss_starts"] == 1
    assert any("lost power" in r.getMessage() for r in caplog.records), caplog.text
    assert vol.gen == gen + 10  # the lost numbers are spent
    assert vol.current() >= need  # the manager's record is met from now on
    assert [lk.mode for lk in vol.links].count(Mode.RW) == 1
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    await vol.close()
    monkeypatch.undo()  # the flags were cleared by MARK_CURRENT: the next one starts plainly
    vol = cluster.volume(5, require=need)
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.RW] * 3
    await vol.close()
