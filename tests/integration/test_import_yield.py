"""A clone's import is background work too (engine/importer.py, engine/background.py):
its own writes through the volume never make it stand back, a consumer's I/O does, and
``import_bandwidth`` caps it. Real replica servers (in this process, on loopback) and the
engine's Volume; the bytes are checked against the source.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

from cargohold.constants import MIB
from cargohold.engine import importer
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings
from tests.support.processes import replica_server_in_process

SIZE = 16 * MIB


async def _source(port: int) -> str:
    """Volume "src" on the server at ``port``: random data, snapshot "s"; -> its SHA-256."""
    c = await ReplicaClient.connect("127.0.0.1", port)
    await c.create("src", SIZE)
    await c.close()
    vol = Volume("src", [ReplicaSpec("src", "127.0.0.1", port)], epoch=1, settings=EngineSettings())
    await vol.start()
    data = random.Random(7).randbytes(SIZE)
    for off in range(0, SIZE, MIB):
        await vol.write(off, memoryview(data)[off : off + MIB], False)
    await vol.flush()
    assert vol.links[0].client is not None
    await vol.links[0].client.snapshot_create("s")
    await vol.close()
    return hashlib.sha256(data).hexdigest()


async def _import(port_src: int, port_dst: int, name: str, consumer: bool, **settings):  # type: ignore[no-untyped-def]
    c = await ReplicaClient.connect("127.0.0.1", port_dst)
    await c.create(name, SIZE)
    await c.close()
    vol = Volume(
        name,
        [ReplicaSpec(name, "127.0.0.1", port_dst)],
        epoch=1,
        settings=EngineSettings(**settings),
    )
    await vol.start()
    reads = 0
    t0 = time.monotonic()
    try:
        job = await importer.start_import(vol, ReplicaSpec("src", "127.0.0.1", port_src), "s")
        while vol.import_job["state"] == "running":
            if consumer:  # a reader of the volume, one 4 KiB read at a time
                await vol.read(random.randrange(SIZE // 4096) * 4096, 4096)
                reads += 1
            else:
                await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 60, vol.import_job
        job = dict(vol.import_job)
        took = time.monotonic() - t0
        assert job["state"] == "succeeded", job
        digest = hashlib.sha256(bytes(await vol.read(0, SIZE))).hexdigest()
        return job, took, reads, digest, dict(vol.counters)
    finally:
        await vol.close()


async def test_an_import_yields_to_a_consumer_only_and_keeps_to_its_cap(tmp_path):
    servers = [await replica_server_in_process(tmp_path / f"n{i}") for i in range(2)]
    try:
        want = await _source(servers[0].port)
        src, dst = servers[0].port, servers[1].port
        # no consumer: its own writes never make it wait
        job, _, _, digest, counters = await _import(src, dst, "quiet", False)
        assert digest == want
        assert job["yields"] == 0 and counters.get("background_yields", 0) == 0
        # a consumer reading all along: it stands back between chunks
        job, _, reads, digest, counters = await _import(src, dst, "busy", True)
        assert digest == want and reads > 0
        assert job["yields"] >= 1 and job["yielded_seconds"] > 0, job
        assert counters["background_yields"] == job["yields"]
        # yielding off: a consumer changes nothing
        job, _, _, digest, _ = await _import(src, dst, "off", True, background_yield_max=0)
        assert digest == want and job["yields"] == 0
        # its cap: 16 MiB at 8 MiB/s takes at least ~2 s (the first chunk is free)
        job, took, _, digest, _ = await _import(src, dst, "capped", False, import_bandwidth=8 * MIB)
        assert digest == want and took >= 1.4, took
    finally:
        for s in servers:
            await s.stop()
