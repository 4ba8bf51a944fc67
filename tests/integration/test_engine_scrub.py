"""The engine's scrubber (cargohold/engine/scrubber.py) against real replica servers on
loopback, in one process: rot in blocks nobody reads is found, read from a healthy replica
and repaired in place — in the head and in a snapshot's layer — and counted; a second pass
finds nothing; passes are throttled; the control API runs one on demand. Also the read
path: a read whose range has rot on every replica (in different blocks) is still served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.engine.control import handle
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.scrubber import Scrubber
from cargohold.engine.volume import Volume
from cargohold.replica.client import ReplicaClient
from cargohold.replica.server import ReplicaServer
from cargohold.settings import EngineSettings
from tests.support.processes import replica_server_in_process, rot

SIZE = 16 * MIB


def _layer_file(disk, rid: str, layer: str = "head") -> str:
    """The data file of a layer (the head, or the snapshot of that name) of a replica."""
    d = os.path.join(str(disk), "replicas", rid)
    with open(os.path.join(d, "replica.meta"), "rb") as f:
        raw = f.read()
    meta = json.loads(raw[20 : 20 + int.from_bytes(raw[12:16], "big")])
    if layer == "head":
        lid = int(meta["head"])
    else:
        lid = next(
            int(k) for k, v in meta["layers"].items() if (v["snapshot"] or {}).get("name") == layer
        )
    return os.path.join(d, f"layer-{lid:06d}.data")


async def _digest(port: int, rid: str, epoch: int, snapshot: str | None = None) -> str:
    c = await ReplicaClient.connect("127.0.0.1", port)
    try:
        await c.open(rid, epoch)
        return hashlib.sha256(bytes(await c.read(0, SIZE, snapshot=snapshot))).hexdigest()
    finally:
        await c.close()


class Cluster:
    def __init__(self, tmp_path, n: int = 2, last_scrub_at: float = 0.0, **settings) -> None:  # type: ignore[no-untyped-def]
        self.tmp, self.n, self.settings = tmp_path, n, settings
        self.last_scrub_at = last_scrub_at
        self.servers: list[ReplicaServer] = []
        self.vol: Volume | None = None
        self.scrubber: Scrubber | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Cluster:
        for i in range(self.n):
            s = await replica_server_in_process(self.tmp / f"n{i}")
            self.servers.append(s)
            c = await ReplicaClient.connect("127.0.0.1", s.port)
            await c.create(f"r{i}", SIZE)
            await c.close()
        specs = [
            ReplicaSpec(f"r{i}", "127.0.0.1", s.port, local=i == 0)
            for i, s in enumerate(self.servers)
        ]
        self.vol = Volume("v", specs, epoch=1, settings=EngineSettings(**self.settings))
        await self.vol.start()
        self.scrubber = Scrubber(self.vol, last_scrub_at=self.last_scrub_at)
        self.task = asyncio.get_running_loop().create_task(self.scrubber.run())
        return self

    async def __aexit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        if self.task is not None:
            self.task.cancel()
        if self.vol is not None:
            await self.vol.close()
        for s in self.servers:
            await s.stop()

    def disk(self, i: int):  # type: ignore[no-untyped-def]
        return self.tmp / f"n{i}"

    async def scrub(self) -> dict:  # type: ignore[type-arg]
        assert self.scrubber is not None
        return await asyncio.wait_for(self.scrubber.wait(self.scrubber.request()), 60)

    async def digests(self, snapshot: str | None = None) -> set[str]:
        return {await _digest(s.port, f"r{i}", 1, snapshot) for i, s in enumerate(self.servers)}


async def _fill(vol: Volume, seed: int = 1) -> bytes:
    data = random_bytes(8 * MIB, seed)
    for off in range(0, len(data), MIB):
        await vol.write(off, memoryview(data)[off : off + MIB], False)
    await vol.flush()
    return data


def random_bytes(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


async def test_scrub_finds_and_repairs_rot_in_blocks_nobody_reads(tmp_path):
    async with Cluster(tmp_path, n=3) as c:
        vol = c.vol
        assert vol is not None
        await _fill(vol)
        rot(_layer_file(c.disk(1), "r1"), [3, 700, 1500])
        rot(_layer_file(c.disk(2), "r2"), [4, 1024])
        rep = await c.scrub()
        assert rep["state"] == "succeeded", rep
        assert (rep["found"], rep["repaired"], rep["unrepaired"]) == (5, 5, 0), rep
        assert rep["replicas"]["r1"]["found"] == 3 and rep["replicas"]["r2"]["found"] == 2
        assert rep["replicas"]["r0"]["found"] == 0
        assert rep["checked_blocks"] == 3 * 2048  # 8 MiB written on each of 3 replicas
        assert sorted((b["replica"], b["block"]) for b in rep["bad"]) == [
            ("r1", 3),
            ("r1", 700),
            ("r1", 1500),
            ("r2", 4),
            ("r2", 1024),
        ]
        assert {b["outcome"] for b in rep["bad"]} == {"repaired"}
        cnt = vol.status()["counters"]
        assert cnt["scrub_bad_blocks"] == 5 and cnt["scrub_repaired_blocks"] == 5
        again = await c.scrub()
        assert (again["found"], again["repaired"]) == (0, 0)
        assert again["pass"] == rep["pass"] + 1
        assert len(await c.digests()) == 1  # every block verified by its server on the way


async def test_scrub_repairs_a_snapshot_layer_from_the_same_snapshot(tmp_path):
    from cargohold.engine import snapshots

    async with Cluster(tmp_path) as c:
        vol = c.vol
        assert vol is not None
        await _fill(vol)
        await snapshots.create(vol, "s1")
        await vol.write(5 * BLOCK_SIZE, memoryview(bytes(b"\x11" * BLOCK_SIZE)), True)
        rot(_layer_file(c.disk(1), "r1", "s1"), [5, 9])  # 5 is shadowed by the head now
        rep = await c.scrub()
        assert (rep["found"], rep["repaired"]) == (2, 2), rep
        assert {(b["layer"], b["block"]) for b in rep["bad"]} == {("s1", 5), ("s1", 9)}
        assert len(await c.digests("s1")) == 1
        assert (await c.scrub())["found"] == 0


async def test_rot_on_every_replica_in_one_read_is_still_served_and_repaired(tmp_path):
    """Invariant 5: each bad block is re-read from a replica that holds it intact, even
    when no replica has the whole requested range intact."""
    async with Cluster(tmp_path) as c:
        vol = c.vol
        assert vol is not None
        data = await _fill(vol)
        rot(_layer_file(c.disk(0), "r0"), [1, 17])
        rot(_layer_file(c.disk(1), "r1"), [2])
        got = await vol.read(0, 32 * BLOCK_SIZE)
        assert bytes(got) == data[: 32 * BLOCK_SIZE]
        deadline = time.monotonic() + 10
        while vol.counters["repaired_blocks"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert vol.counters["repaired_blocks"] == 3
        assert (await c.scrub())["found"] == 0
        assert len(await c.digests()) == 1


async def test_a_block_nobody_holds_intact_is_reported_not_repaired(tmp_path):
    async with Cluster(tmp_path) as c:
        vol = c.vol
        assert vol is not None
        await _fill(vol)
        rot(_layer_file(c.disk(0), "r0"), [8])
        rot(_layer_file(c.disk(1), "r1"), [8])
        rep = await c.scrub()
        assert (rep["found"], rep["repaired"], rep["unrepaired"]) == (2, 0, 2), rep
        assert {b["outcome"] for b in rep["bad"]} == {"no healthy copy"}
        assert vol.counters["scrub_unrepaired_blocks"] == 2


async def test_scrub_is_throttled_to_its_bandwidth(tmp_path):
    async with Cluster(tmp_path, scrub_bandwidth=16 * MIB, scrub_window=1 * MIB) as c:
        assert c.vol is not None
        await _fill(c.vol)  # 8 MiB on each replica: at least 0.5 s at 16 MiB/s
        t = time.monotonic()
        rep = await c.scrub()
        took = time.monotonic() - t
        assert rep["found"] == 0 and rep["checked_blocks"] == 2 * 2048
        assert took >= 0.45, took
        assert took < 5, took


async def test_scrub_on_demand_through_the_control_api(tmp_path):
    async with Cluster(tmp_path) as c:
        vol, scrubber = c.vol, c.scrubber
        assert vol is not None and scrubber is not None
        await _fill(vol)
        rot(_layer_file(c.disk(1), "r1"), [77])
        started = await handle(vol, {"op": "scrub"}, scrubber)
        number = started["scrub"]["pass"]
        rep = await asyncio.wait_for(scrubber.wait(number), 30)
        assert (rep["found"], rep["repaired"]) == (1, 1)
        st = await handle(vol, {"op": "status"}, scrubber)
        assert st["scrub"]["last"]["pass"] == number and st["scrub"]["running"] is None
        assert st["counters"]["scrub_repaired_blocks"] == 1
        waited = await handle(vol, {"op": "scrub", "wait": True}, scrubber)
        assert waited["scrub"]["pass"] == number + 1 and waited["scrub"]["found"] == 0


async def test_periodic_passes_follow_the_interval_setting(tmp_path):
    # 2 ms: passes run back to back; 0 would mean on demand only
    async with Cluster(tmp_path, scrub_interval_hours=2e-3 / 3600) as c:
        assert c.vol is not None and c.scrubber is not None
        rot(_layer_file(c.disk(1), "r1"), [])  # nothing written: nothing to find
        deadline = time.monotonic() + 10
        while c.vol.counters["scrub_passes"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert c.vol.counters["scrub_passes"] >= 3
        assert c.scrubber.last is not None and c.scrubber.last["reason"] == "periodic"


async def test_the_first_periodic_pass_counts_from_the_volumes_last_one(tmp_path):
    """An engine told that the volume's last pass ended an interval ago (as the manager
    records it across engines) scrubs within moments, not an interval after its start;
    told of a recent pass, it waits; a pass it ends becomes its new ``last_scrub_at``."""
    every = 20.0  # seconds: an overdue pass starts within 10 % of it (2 s)
    hours = every / 3600
    async with Cluster(
        tmp_path, last_scrub_at=time.time() - every, scrub_interval_hours=hours
    ) as c:
        assert c.vol is not None and c.scrubber is not None
        deadline = time.monotonic() + 10
        while c.vol.counters["scrub_passes"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert c.scrubber.last is not None and c.scrubber.last["reason"] == "periodic"
        assert c.scrubber.status()["last_scrub_at"] > time.time() - 10
    (tmp_path / "b").mkdir()
    async with Cluster(
        tmp_path / "b", last_scrub_at=time.time() - 1, scrub_interval_hours=hours
    ) as c:
        assert c.vol is not None
        await asyncio.sleep(0.3)
        assert c.vol.counters["scrub_passes"] == 0


@pytest.mark.parametrize("hours", [0.0])
async def test_no_pass_without_a_request_when_the_interval_is_zero(tmp_path, hours):
    async with Cluster(tmp_path, scrub_interval_hours=hours) as c:
        assert c.vol is not None
        await asyncio.sleep(0.3)
        assert c.vol.counters["scrub_passes"] == 0
        assert (await c.scrub())["reason"] == "requested"


async def test_a_snapshot_left_on_some_replicas_is_taken_again_on_all(tmp_path):
    """An engine killed in the middle of a snapshot create leaves it on some replicas only
    (scenario 9 of the fault matrix); the retried create takes it again on every replica,
    at one point. A create that finds it everywhere answers AlreadyExists (done)."""
    from cargohold.engine import snapshots
    from cargohold.errors import AlreadyExists

    async with Cluster(tmp_path) as c:
        vol = c.vol
        assert vol is not None
        await _fill(vol)
        c0 = vol.links[0].client
        assert c0 is not None
        await c0.snapshot_create("s", {})  # as if the engine died after the first replica
        await vol.write(0, memoryview(b"\x22" * BLOCK_SIZE), True)  # writes since then
        info = await snapshots.create(vol, "s")
        lists = [await link.client.snapshot_list() for link in vol.links]  # type: ignore[union-attr]
        gens = {s["generation"] for ls in lists for s in ls if s["name"] == "s"}
        assert [sorted(s["name"] for s in ls) for ls in lists] == [["s"], ["s"]]
        assert gens == {info["generation"]}
        assert len(await c.digests("s")) == 1
        with pytest.raises(AlreadyExists):
            await snapshots.create(vol, "s")
