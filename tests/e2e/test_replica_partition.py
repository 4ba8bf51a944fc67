"""Replica servers on nodes in network namespaces: a partition, a takeover, a heal.

The engine of this test is the test itself, on its own node, talking to replica servers on
two other nodes over a real (bridged, namespaced) network. It shows what the engine (issue
3) will build on: a cut-off node stalls only the requests sent to it; a new engine with a
higher epoch fences the old one on every replica it reaches; when the cut node comes back,
the old engine's delayed writes land only if they arrived before the takeover did, and
everything after is refused.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import Fenced
from cargohold.replica.client import ReplicaClient
from tests.support.processes import ServerProc

pytestmark = pytest.mark.root


async def _client(lab, node: str, server: ServerProc) -> ReplicaClient:
    host = lab.nodes[server.node].addr
    sock = lab.connect(node, host, server.port)
    return await ReplicaClient.connect(sock=sock)


async def test_partition_takeover_and_heal(lab, tmp_path):
    for name in ("engine", "engine-2", "node-1", "node-2"):
        lab.add_node(name)
    servers = {}
    for name in ("node-1", "node-2"):
        disk = tmp_path / name
        disk.mkdir()
        s = ServerProc(
            [str(disk)], host=lab.nodes[name].addr, port=9500, prefix=tuple(lab.exec_prefix(name))
        )
        s.node = name  # type: ignore[attr-defined]
        servers[name] = s.start()
    try:
        old = {n: await _client(lab, "engine", s) for n, s in servers.items()}
        for c in old.values():
            await c.create("vol-r", 64 * MIB)
            await c.open("vol-r", epoch=1)
        base = bytes(range(256)) * (MIB // 256)
        await asyncio.gather(*(c.write(0, base) for c in old.values()))
        await asyncio.gather(*(c.flush() for c in old.values()))

        # node-2 is cut off: requests to it stall, node-1 serves on
        lab.partition("node-2")
        stalled = asyncio.ensure_future(old["node-2"].write(MIB, b"L" * BLOCK_SIZE))
        await old["node-1"].write(MIB, b"L" * BLOCK_SIZE)
        done, _ = await asyncio.wait([stalled], timeout=2.0)
        assert not done, "a write to a partitioned node cannot complete"
        assert bytes(await old["node-1"].read(0, MIB)) == base

        # a new engine (another node) takes over with epoch 2; it reaches node-1 only
        new1 = await _client(lab, "engine-2", servers["node-1"])
        await new1.open("vol-r", epoch=2)
        with pytest.raises(Fenced):
            await old["node-1"].write(2 * MIB, b"X" * BLOCK_SIZE)

        # node-2 comes back: the old engine's delayed write was sent before the takeover
        # reached node-2, so node-2 may take it; once the new engine opens node-2, no more
        lab.heal("node-2")
        await asyncio.wait_for(stalled, timeout=60)  # TCP retransmits after the heal
        new2 = await _client(lab, "engine-2", servers["node-2"])
        await new2.open("vol-r", epoch=2)
        with pytest.raises(Fenced):
            await old["node-2"].write(3 * MIB, b"Y" * BLOCK_SIZE)
        # nothing the old engine wrote after the takeover exists anywhere
        for c in (new1, new2):
            assert bytes(await c.read(2 * MIB, 2 * MIB)) == bytes(2 * MIB)
            assert bytes(await c.read(0, MIB)) == base
        for c in (*old.values(), new1, new2):
            await c.close()
    finally:
        for s in servers.values():
            s.stop()


async def test_a_partitioned_node_keeps_its_data_and_serves_after_heal(lab, tmp_path):
    lab.add_node("engine")
    lab.add_node("node-1")
    (tmp_path / "d").mkdir()
    s = ServerProc(
        [str(tmp_path / "d")],
        host=lab.nodes["node-1"].addr,
        port=9500,
        prefix=tuple(lab.exec_prefix("node-1")),
    )
    s.node = "node-1"  # type: ignore[attr-defined]
    s.start()
    try:
        c = await _client(lab, "engine", s)
        await c.create("r", 16 * MIB)
        await c.open("r", epoch=1)
        await c.write(0, b"k" * MIB, fua=True)
        lab.partition("node-1")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.read(0, BLOCK_SIZE), timeout=1.0)
        assert time.monotonic() - t0 < 5
        lab.heal("node-1")
        deadline = time.monotonic() + 30
        while True:  # a fresh connection works as soon as the link is back
            try:
                c2 = await _client(lab, "engine", s)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        await c2.open("r", epoch=1)
        assert bytes(await c2.read(0, MIB)) == b"k" * MIB
        await c.close()
        await c2.close()
    finally:
        s.stop()
