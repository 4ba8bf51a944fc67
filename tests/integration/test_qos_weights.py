"""Weights on a busy node (docs/qos.md, "Weights and guaranteed minimums"), end to end: a
local cluster of real processes (manager, one agent with a node IOPS budget, its replica
server and engines), two volumes with weights 300 and 100 attached on that node, loaded
by real NBD clients (tests/support/nbd_load.py) at QD16 each.

- a lone busy volume is not throttled: it runs well above the node budget;
- both busy: the agent divides the budget 3:1 (within 25%), ``volume get`` shows the
  share, and the agent lifts the limits again when one goes idle.

A cluster start and ~25 s of load: ``long``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.nbd_load import run_load
from tests.support.polling import wait_until

BUDGET = 400  # IOPS: far below what the node does, so two busy volumes contend for it

pytestmark = pytest.mark.long


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CARGOHOLD_AGENT_NODE_IOPS", str(BUDGET))  # the agents inherit it
    d = Path(f"/tmp/chl-qosw-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=1).up(timeout=120)
    try:
        yield d
    finally:
        c.down(purge=True)


def endpoint(d: Path, name: str) -> tuple[int, str]:
    uri = cli(d, "volume", "attach", name, "--node", "node-1").stdout.strip()
    u = urlparse(uri)
    assert u.scheme == "nbd" and u.port, uri
    return u.port, u.path.lstrip("/")


def applied_iops(d: Path, name: str) -> object:
    q = js(d, "volume", "get", name)["qos"]  # type: ignore[index]
    return (q.get("applied") or {}).get("max_iops", "none")  # type: ignore[union-attr]


def test_two_volumes_share_a_busy_node_by_weight_and_a_lone_one_is_free(cluster: Path) -> None:
    d = cluster
    cli(d, "volume", "create", "heavy", "--size", "64MiB", "--replicas", "1", "--weight", "300")
    cli(d, "volume", "create", "light", "--size", "64MiB", "--replicas", "1")
    assert js(d, "volume", "get", "heavy")["qos"]["limits"]["weight"] == 300  # type: ignore[index]
    heavy, light = endpoint(d, "heavy"), endpoint(d, "light")

    async def scenario():  # type: ignore[no-untyped-def]
        h = asyncio.create_task(run_load(*heavy, depth=16, seconds=20.0))
        await asyncio.sleep(6.0)  # heavy alone for 6 s, then both for 10 s
        loading = asyncio.create_task(run_load(*light, depth=16, seconds=10.0))
        await asyncio.sleep(3.0)
        shown = await asyncio.to_thread(  # volume get shows the share while it holds
            wait_until,
            lambda: js(d, "volume", "get", "light")["qos"]["fair_iops"],  # type: ignore[index]
            6.0,
            "light's fair share shown",
            0.3,
        )
        return await h, await loading, shown

    h, li, shown = asyncio.run(scenario())
    assert shown == pytest.approx(BUDGET / 4, rel=0.25), shown
    assert h.errors == h.timeouts == li.errors == li.timeouts == 0
    alone = h.rate(1.0, 6.0)
    assert alone > 1.3 * BUDGET, f"a lone volume was held to {alone:.0f} IOPS"
    # light started at ~6 s (its own clock); the agent decides each second: skip 3 s
    lo, hi = li.started - h.started + 3.0, li.started - h.started + 10.0
    rh, rl = h.rate(lo, hi), li.rate(3.0, 10.0)
    print(f"alone {alone:.0f} IOPS; shared: heavy {rh:.0f}, light {rl:.0f} (budget {BUDGET})")
    assert rh / rl == pytest.approx(3.0, rel=0.25), (rh, rl)
    assert rh + rl == pytest.approx(BUDGET, rel=0.25), (rh, rl)
    # light idle again: heavy's fair limit is lifted
    wait_until(lambda: applied_iops(d, "heavy") == "none", 30, "heavy's fair limit lifted", 0.5)
