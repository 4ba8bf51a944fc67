"""A volume fenced by a bogus epoch, end to end on a local cluster of real processes
(manager, two agents, their replica servers and engines): issue #14 item 4.

Before: a client that OPENed a replica with epoch 2**62 fenced the volume for ever — every
later engine got a manager epoch (2, 3, ...) below it and crash-looped, the volume sat
``attaching`` reporting ``healthy`` with no error, and nothing could recover it. Now the
replica refuses such an epoch outright; one that is persisted anyway (an older version
without the bound, or a client that sends ``"jump"``, possible until mutual TLS) shows in
the volume's error, and ``cargohold volume recover-epoch`` brings the volume back with its
data.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.errors import InvalidArgument
from cargohold.launcher.cluster import LocalCluster
from cargohold.replica.client import ReplicaClient
from cargohold.security.tls import Credentials
from tests.support.cli import cli, js
from tests.support.nbd_clients import pattern_ok, qemu_io
from tests.support.polling import wait_until
from tests.support.tls import node_agent_credentials

BOGUS = 2**62


@pytest.fixture
def cluster2() -> Iterator[tuple[LocalCluster, Path]]:
    d = Path(f"/tmp/chl-epoch-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=2).up(timeout=90)
    try:
        yield c, d
    finally:
        c.down(purge=True)


async def hostile_open(host: str, port: int, replica: str, tls: Credentials | None) -> None:
    """As a node's agent (over mutual TLS): it may open any replica at any epoch."""
    c = await ReplicaClient.connect(host, port, tls=tls, replica=replica)
    try:
        with pytest.raises(InvalidArgument, match="no manager issued it"):
            await c.open(replica, BOGUS)  # refused: nothing persisted
        await c.open(replica, BOGUS, jump=True)  # what an older version accepted as is
    finally:
        await c.close()


def test_a_bogus_epoch_is_reported_and_recover_epoch_brings_the_volume_back(
    cluster2: tuple[LocalCluster, Path],
) -> None:
    c, d = cluster2
    cli(d, "volume", "create", "data", "--size", "32MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x6b 0 2M")
    cli(d, "volume", "detach", "data")
    vol = js(d, "volume", "get", "data")
    nodes = {n["name"]: n for n in js(d, "node", "list")}  # type: ignore[union-attr]
    for r in vol["replicas"]:  # type: ignore[index]
        n = nodes[r["node"]]
        tls = node_agent_credentials(c, r["node"])
        asyncio.run(hostile_open(n["address"], n["replica_port"], r["id"], tls))

    # attach again: every engine is fenced; the volume says why and what to do
    p = cli(d, "volume", "attach", "data", "--node", "node-1", "--timeout", "5", check=False)
    assert p.returncode != 0  # it cannot attach
    wants = {
        f"fenced by epoch {BOGUS} on replica {r['id']}, above every epoch the manager "
        "issued: run `cargohold volume recover-epoch data`"
        for r in vol["replicas"]  # type: ignore[index]
    }
    vol = wait_until(
        lambda: (v := js(d, "volume", "get", "data"))["error"] in wants and v,
        60,
        "the fenced volume's error",
        0.2,
    )
    assert vol["state"] == "attaching"  # type: ignore[index]
    assert vol["robustness"] != "healthy"  # type: ignore[index]
    assert {r["epoch"] for r in vol["replicas"]} == {BOGUS}  # type: ignore[index]

    # the way out
    out = cli(d, "volume", "recover-epoch", "data").stdout
    assert f"epoch raised to {BOGUS}" in out, out
    vol = wait_until(
        lambda: (v := js(d, "volume", "get", "data"))["state"] == "attached" and v,
        60,
        "attached after recover-epoch",
        0.2,
    )
    assert vol["epoch"] == BOGUS + 1 and vol["error"] == ""  # type: ignore[index]
    assert wait_until(
        lambda: js(d, "volume", "get", "data")["robustness"] == "healthy", 60, "healthy", 0.2
    )
    uri = vol["endpoint"]  # type: ignore[index]
    assert pattern_ok(uri, 0, 2 << 20, 0x6B)  # the data written before is all there
    qemu_io(uri, "write -P 0x11 4M 1M")
    assert pattern_ok(uri, 4 << 20, 1 << 20, 0x11)
