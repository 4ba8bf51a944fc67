"""Rebuild under live writes, in one process: replica servers and the engine share an event
loop, so thousands of writes can race a slow, windowed rebuild. Whatever the interleaving,
the rebuilt replica must end identical to the one it was rebuilt from.

This is the case the rebuild's window exists for: a write that reaches both replicas after
the source's EXPORT but before the target's IMPORT would otherwise be overwritten on the
target by older data."""

from __future__ import annotations

import asyncio
import random

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.engine import rebuild
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings
from tests.support.processes import replica_server_in_process

SIZE = 16 * MIB


async def _content(port: int, rid: str, epoch: int) -> bytes:
    c = await ReplicaClient.connect("127.0.0.1", port)
    await c.open(rid, epoch)
    data = bytes(await c.read(0, SIZE))
    await c.close()
    return data


@pytest.mark.parametrize(
    ("seed", "bandwidth", "chunk"),
    [
        (1, 24 * MIB, None),
        (2, 24 * MIB, None),
        (3, 24 * MIB, None),
        (4, 0, MIB),
        (5, 0, 64 * 1024),
    ],
    ids=["throttled-1", "throttled-2", "throttled-3", "pipelined-4", "pipelined-5"],
)
async def test_rebuild_under_concurrent_writes_ends_identical(
    tmp_path, monkeypatch, seed, bandwidth, chunk
):
    # throttled: one chunk at a time; unthrottled: export k+1 while k is imported, in chunks
    # small enough that thousands of writes race hundreds of them
    if chunk:
        monkeypatch.setattr(rebuild, "CHUNK_BYTES", chunk)
    servers = [await replica_server_in_process(tmp_path / f"n{i}") for i in range(2)]
    try:
        for i, s in enumerate(servers):
            c = await ReplicaClient.connect("127.0.0.1", s.port)
            await c.create(f"r{i}", SIZE)
            await c.close()
        specs = [ReplicaSpec(f"r{i}", "127.0.0.1", s.port) for i, s in enumerate(servers)]
        # pipelined: the consumer here never pauses, so yielding (engine/background.py) would
        # turn every chunk into a one-at-a-time copy; this test is about the pipelined races
        yielding = 0.05 if bandwidth else 0.0
        settings = EngineSettings(
            rebuild_window=1 * MIB, rebuild_bandwidth=bandwidth, background_yield_max=yielding
        )
        vol = Volume("v", specs[:1], epoch=1, settings=settings)
        await vol.start()
        rnd = random.Random(seed)
        for off in range(0, SIZE, MIB):  # history for the rebuild to copy
            await vol.write(off, memoryview(rnd.randbytes(MIB)), False)

        await vol.add_replica(specs[1])
        link = vol.links[1]
        assert link.mode is Mode.WO
        writes = 0

        async def writer() -> None:
            nonlocal writes
            while link.mode is Mode.WO:
                n = rnd.choice([1, 1, 2, 8])
                lba = rnd.randrange(SIZE // BLOCK_SIZE - n)
                if rnd.random() < 0.1:
                    await vol.write_zeroes(lba * BLOCK_SIZE, n * BLOCK_SIZE, False)
                else:
                    await vol.write(
                        lba * BLOCK_SIZE, memoryview(rnd.randbytes(n * BLOCK_SIZE)), False
                    )
                writes += 1

        await asyncio.wait_for(asyncio.gather(*(writer() for _ in range(16))), timeout=60)
        assert link.mode is Mode.RW, link.error
        assert writes > 200, "the rebuild should have raced many writes"
        assert link.rebuild["copied_bytes"] > SIZE // 2  # a full copy (zeroed blocks are free)
        assert link.generation == vol.gen
        a = await _content(servers[0].port, "r0", 1)
        b = await _content(servers[1].port, "r1", 1)
        assert a == b, "the rebuilt replica differs from its source"
        await vol.close()
    finally:
        for s in servers:
            await s.stop()
