"""QoS through the whole control path of a local cluster (manager, three agents, their
replica servers and engines): limits set at create with the CLI reach the engine; a
change through the REST API (``PATCH /api/v1/volumes/{volume}``) while a client keeps 16
requests in flight holds within a second, with no I/O error; ``volume get`` shows the
limits the engine applies and its throttle counts. ``long``: a cluster takes a while to
start on a loaded machine; the engine-level test of the same (test_qos.py) runs by default.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.nbd_load import run_load
from tests.support.polling import wait_until

pytestmark = pytest.mark.long


@pytest.fixture
def cluster() -> Iterator[Path]:
    d = Path(f"/tmp/chq-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3).up(timeout=120)
    try:
        yield d
    finally:
        c.down(purge=True)


def test_a_change_reaches_the_running_engine_within_a_second(cluster: Path) -> None:
    d = cluster
    cli(d, "volume", "create", "data", "--size", "64MiB", "--replicas", "2", "--max-iops", "100")
    uri = urlparse(cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip())
    assert uri.port is not None

    def applied() -> dict | None:  # type: ignore[type-arg]
        return js(d, "volume", "get", "data")["qos"]["applied"]  # type: ignore[index, no-any-return]

    wait_until(lambda: applied() == {"max_iops": 100}, 30, "the engine applies the limits", 0.5)

    async def scenario() -> tuple:  # type: ignore[type-arg]
        loading = asyncio.create_task(run_load(uri.port, "data", depth=16, seconds=6.0))
        await asyncio.sleep(2.5)
        with ManagerClient.discover(None, str(d)) as c:
            await asyncio.to_thread(c.update_volume, "data", {"max_iops": 300})
        changed = time.monotonic()  # the manager stored it: from now on, 1 s
        return await loading, changed

    load, changed = asyncio.run(scenario())
    assert load.errors == 0 and load.timeouts == 0
    at = changed - load.started
    assert load.rate(1.0, 2.5) == pytest.approx(100, rel=0.15)
    assert load.rate(at + 1.0, 6.0) == pytest.approx(300, rel=0.15), "not applied within 1 s"
    v = js(d, "volume", "get", "data")
    wait_until(lambda: applied() == {"max_iops": 300}, 30, "the new limits reported", 0.5)
    v = js(d, "volume", "get", "data")
    assert v["qos"]["throttled_requests_total"] > 0  # type: ignore[index]
    text = cli(d, "volume", "get", "data").stdout
    assert "max_iops=300" in text and "throttled" in text
    out = cli(d, "volume", "update", "data", "--max-iops", "5", check=False)
    assert out.returncode != 0 and "max_iops='5' is not valid" in out.stdout + out.stderr
