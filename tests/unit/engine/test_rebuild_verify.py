"""The rebuild's verification gives up after a bounded number of copies: a target that
keeps differing from its source stays out of the write set (ERR) with a reason naming the
first block, and the volume keeps serving from the source. Real replica servers in this
process; only ``compare.recopy`` is replaced (by one that copies nothing), which no real
replica can be made to do on purpose."""

from __future__ import annotations

import asyncio

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.engine import compare
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings
from tests.support.processes import replica_server_in_process


async def _wait(pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_target_that_keeps_differing_fails_its_rebuild(tmp_path, monkeypatch):
    servers = [await replica_server_in_process(tmp_path / f"n{i}") for i in range(2)]
    try:
        for i, s in enumerate(servers):
            c = await ReplicaClient.connect("127.0.0.1", s.port)
            await c.create(f"r{i}", 16 * MIB)
            await c.close()
        specs = [ReplicaSpec(f"r{i}", "127.0.0.1", s.port) for i, s in enumerate(servers)]
        vol = Volume("v", specs, epoch=1, settings=EngineSettings())
        await vol.start()
        await vol.write(0, memoryview(b"a" * MIB), False)
        # around the engine: r1 gets a block the source never had, at a guessed generation
        c = await ReplicaClient.connect("127.0.0.1", servers[1].port)
        info = await c.open("r1", 1)
        await c.write(5 * BLOCK_SIZE, b"X" * BLOCK_SIZE, generation=info["seen"] + 1)
        await c.close()
        await vol.write(MIB, memoryview(b"b" * BLOCK_SIZE), False)  # r1 refuses: dropped
        r1 = vol.links[1]
        assert r1.mode is Mode.ERR

        calls = []

        async def copies_nothing(source, target, blocks, timeout):  # type: ignore[no-untyped-def]
            calls.append(blocks.tolist())
            return 0

        monkeypatch.setattr(compare, "recopy", copies_nothing)
        await vol.add_replica(specs[1])
        await _wait(lambda: r1.mode is Mode.ERR and "rebuild failed" in r1.error)
        assert "still differ from the source after 3 copies" in r1.error, r1.error
        assert "first: block 5" in r1.error, r1.error
        assert len(calls) == 3 and calls[0] == [5, 256], calls
        assert r1.rebuild["diverged_blocks"] == 2
        assert vol.counters["rebuild_diverged_blocks"] == 2
        assert vol.robustness() == "degraded"
        assert bytes(await vol.read(5 * BLOCK_SIZE, BLOCK_SIZE)) == b"a" * BLOCK_SIZE
        await vol.close()
    finally:
        for s in servers:
            await s.stop()
