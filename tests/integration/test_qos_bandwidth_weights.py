"""Weights over a node's bandwidth (docs/qos.md, "The node's bandwidth"), end to end: a
local cluster of real processes (manager, one agent with a node bandwidth budget and no
IOPS budget, its replica server and engines), two volumes with weights 300 and 100
attached on that node, loaded by real NBD clients (tests/support/nbd_load.py) with 256 KiB
reads at QD4 each.

- a lone busy volume is not throttled: it reads well above the node budget;
- both busy: the agent divides the bytes per second 3:1 (within 25%), ``volume get``
  shows ``fair_bandwidth``, and no IOPS share is set (no IOPS budget).

A cluster start and ~20 s of load: ``long``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.integration.test_qos_weights import endpoint
from tests.support.cli import cli, js
from tests.support.nbd_load import run_load
from tests.support.polling import wait_until

MIB = 1 << 20
BUDGET = 8 * MIB  # bytes/s: far below what the node reads, so two busy volumes contend
SIZE = 256 * 1024  # one request: one op of the cost model, a quarter MiB

pytestmark = pytest.mark.long


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CARGOHOLD_AGENT_NODE_BANDWIDTH", "8Mi")  # the agents inherit it
    monkeypatch.delenv("CARGOHOLD_AGENT_NODE_IOPS", raising=False)
    d = Path(f"/tmp/chl-qosbw-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=1).up(timeout=120)
    try:
        yield d
    finally:
        c.down(purge=True)


def test_two_volumes_share_a_nodes_bandwidth_by_weight(cluster: Path) -> None:
    d = cluster
    cli(d, "volume", "create", "heavy", "--size", "64MiB", "--replicas", "1", "--weight", "300")
    cli(d, "volume", "create", "light", "--size", "64MiB", "--replicas", "1")
    heavy, light = endpoint(d, "heavy"), endpoint(d, "light")

    async def scenario():  # type: ignore[no-untyped-def]
        h = asyncio.create_task(run_load(*heavy, depth=4, seconds=16.0, size=SIZE))
        await asyncio.sleep(5.0)  # heavy alone for 5 s, then both for 10 s
        loading = asyncio.create_task(run_load(*light, depth=4, seconds=10.0, size=SIZE))
        await asyncio.sleep(3.0)
        shown = await asyncio.to_thread(  # volume get shows the share while it holds
            wait_until,
            lambda: js(d, "volume", "get", "light")["qos"]["fair_bandwidth"],  # type: ignore[index]
            6.0,
            "light's fair bandwidth shown",
            0.3,
        )
        q = await asyncio.to_thread(lambda: js(d, "volume", "get", "heavy")["qos"])
        return await h, await loading, shown, q

    h, li, shown, q = asyncio.run(scenario())
    assert shown == pytest.approx(BUDGET / 4, rel=0.25), shown
    assert q["fair_iops"] is None and q["fair_bandwidth"] == pytest.approx(3 * BUDGET / 4, rel=0.25)
    assert h.errors == h.timeouts == li.errors == li.timeouts == 0
    alone = h.rate(1.0, 5.0, SIZE)
    assert alone > 1.3 * BUDGET, f"a lone volume was held to {alone / MIB:.1f} MiB/s"
    lo, hi = li.started - h.started + 3.0, li.started - h.started + 10.0
    rh, rl = h.rate(lo, hi, SIZE), li.rate(3.0, 10.0, SIZE)
    print(f"alone {alone / MIB:.1f} MiB/s; shared: heavy {rh / MIB:.2f}, light {rl / MIB:.2f}")
    assert rh / rl == pytest.approx(3.0, rel=0.25), (rh, rl)
    assert rh + rl == pytest.approx(BUDGET, rel=0.25), (rh, rl)
