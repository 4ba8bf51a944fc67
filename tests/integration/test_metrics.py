"""Metrics through a real Prometheus (Debian's ``prometheus``) scraping a local cluster of
real processes (a manager, three agents, replica servers, engines; mutual TLS), with the
scrape configuration ``cargohold up`` writes (issue 20; docs/observability.md):

- a known fio load (rate-limited random writes through the engine's NBD endpoint): the
  engine's write counter equals fio's count exactly, PromQL's rate() of it matches the
  load's rate, histogram_quantile gives a sane p99; the series of a volume stay under the
  cap and are the same number for each volume;
- who may scrape an agent: no certificate, an agent's certificate refused; reader passes;
- (long) a node's agent killed: CargoholdNodeDown fires (a test copy of the rules with a
  short ``for:``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cargohold.cli.fio import parse_report
from cargohold.launcher import credentials
from cargohold.launcher.cluster import LocalCluster
from cargohold.launcher.processes import free_ports
from tests.support.cli import cli
from tests.support.nbd_clients import need
from tests.support.polling import wait_until
from tests.support.processes import terminate

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/monitoring/cargohold-rules.yml"
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (Debian's package: scripts/setup.sh)"
)
SCRAPE = "1s"
IOPS = 200  # fio's --rate_iops
LOAD_SECONDS = 6


class World:
    def __init__(self, cluster: LocalCluster, d: Path, prom_url: str) -> None:
        self.cluster, self.d, self.prom = cluster, d, prom_url

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        got = self.query(expr)
        return float(got[0]["value"][1]) if got else None

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.prom}/api/v1/alerts", timeout=10) as r:
            return list(json.load(r)["data"]["alerts"])


def _rules_for_tests(out: Path) -> Path:
    """The alerting rules with every ``for:`` cut to 2 s (so a test sees them fire)."""
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        g["interval"] = SCRAPE
        for r in g["rules"]:
            if "for" in r:
                r["for"] = "2s"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    need("fio")
    d = Path(f"/tmp/chl-metrics-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3).up(timeout=90)
    prom: subprocess.Popen[bytes] | None = None
    try:
        cfg = yaml.safe_load((d / "prometheus" / "prometheus.yml").read_text())
        cfg["global"] = {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE}
        cfg["rule_files"] = [str(_rules_for_tests(d / "prometheus" / "rules.yml"))]
        (d / "prometheus" / "test.yml").write_text(yaml.safe_dump(cfg))
        port = free_ports(1)[0]
        log = open(d / "logs" / "prometheus.log", "wb")
        assert PROMETHEUS is not None
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={d / 'prometheus' / 'test.yml'}",
                f"--storage.tsdb.path={d / 'prometheus' / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        w = World(c, d, f"http://127.0.0.1:{port}")

        def all_up() -> bool:
            try:
                got = w.query("up")
            except OSError:
                return False
            return len(got) == 4 and all(r["value"][1] == "1" for r in got)

        try:
            wait_until(all_up, 60, "Prometheus scraping the manager and three agents", 0.5)
        except AssertionError:
            print((d / "logs" / "prometheus.log").read_text()[-3000:])
            raise
        yield w
    finally:
        terminate(prom)
        c.down(purge=True)


def _fio_writes(uri: str, seconds: float, iops: int) -> int:
    """Random 4 KiB writes at ``iops`` for ``seconds``; -> how many fio completed."""
    cmd = [
        "fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
        "--iodepth=4", f"--rate_iops={iops}", "--time_based", f"--runtime={seconds}s",
        "--size=16M", "--randrepeat=0", "--norandommap", "--output-format=json",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    assert p.returncode == 0, p.stderr + p.stdout
    return int(parse_report(p.stdout)["jobs"][0]["write"]["total_ios"])


def _agent_url(w: World, node: str) -> str:
    n = w.cluster.nodes[node]
    return f"https://{n.address}:{n.metrics_port}/metrics"


def _client(w: World, cred_dir: Path | None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(credentials.ca_dir(str(w.d)) / "ca.crt"))
    if cred_dir is not None:
        ctx.load_cert_chain(cred_dir / "tls.crt", cred_dir / "tls.key")
    return httpx.Client(verify=ctx, timeout=10)


def test_prometheus_sees_the_load_fio_made(world: World) -> None:
    w, d = world, world.d
    cli(d, "volume", "create", "data", "--size", "32MiB")
    cli(d, "volume", "create", "quiet", "--size", "32MiB")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    cli(d, "volume", "attach", "quiet", "--node", "node-1")
    base = w.value('sum(cargohold_volume_ops_total{op="write",volume="data"})') or 0.0
    t0 = time.time()
    done = _fio_writes(uri, LOAD_SECONDS, IOPS)
    t1 = time.time()
    assert done >= IOPS * LOAD_SECONDS * 0.8, done

    # the counter, once scraped after the load, moved by exactly what fio wrote
    def counted() -> float | None:
        v = w.value('sum(cargohold_volume_ops_total{op="write",volume="data"})')
        return v if v is not None and v - base >= done else None

    total = wait_until(counted, 20, "the engine's write count in Prometheus", 0.5)
    assert total - base == done, (total, base, done)
    # rate() over the middle of the load matches its rate (fio paces at IOPS)
    mid = (t0 + t1) / 2
    url_t = f"&time={mid + 2:.3f}"
    with urllib.request.urlopen(
        f"{w.prom}/api/v1/query?"
        + urllib.parse.urlencode(
            {"query": 'sum(rate(cargohold_volume_ops_total{op="write",volume="data"}[4s]))'}
        )
        + url_t,
        timeout=10,
    ) as r:
        res = json.load(r)["data"]["result"]
    rate = float(res[0]["value"][1])
    assert IOPS * 0.7 <= rate <= IOPS * 1.3, rate
    # p99 and p50 of the write latency: positive, ordered, below a second here
    q = 'histogram_quantile({q}, sum by (le) (rate(cargohold_volume_op_latency_seconds_bucket{{op="write",volume="data"}}[30s])))'
    p50, p99 = w.value(q.format(q=0.5)), w.value(q.format(q=0.99))
    assert p50 is not None and p99 is not None
    assert 0 < p50 <= p99 < 1.0, (p50, p99)
    # what the other series say about it
    assert w.value('cargohold_volume_robustness{volume="data",robustness="healthy"}') == 1.0
    assert w.value('sum(cargohold_volume_written_bytes_total{volume="data"})') >= done * 4096
    assert w.value('cargohold_volume_up{volume="quiet"}') == 1.0
    assert w.value('sum(cargohold_disk_ops_total{node="node-1"})') > 0
    assert w.value('cargohold_volumes{state="attached",robustness="healthy"}') == 2.0
    assert w.value("max(cargohold_manager_leader)") == 1.0
    r = w.query(
        'cargohold_api_request_duration_seconds_count{route="/api/v1/volumes/{volume}/attach"}'
    )
    assert r, "the attach route's latency is recorded under its template"

    # series per volume: under the cap and alike for both volumes (cardinality is per
    # volume, not per request); the node's own series few
    reader = credentials.prometheus_tls_dir(str(d))
    with _client(w, reader) as c:
        text = c.get(_agent_url(w, "node-1")).text
    per_volume = {
        v: len(re.findall(rf'^cargohold_volume_\w+\{{[^}}]*volume="{v}"', text, re.M))
        for v in ("data", "quiet")
    }
    assert 20 <= per_volume["data"] <= 120, per_volume
    node_only = [
        ln for ln in text.splitlines() if ln.startswith("cargohold_") and "volume=" not in ln
    ]
    assert len(node_only) <= 40, node_only


def test_only_metrics_readers_may_scrape_an_agent(world: World) -> None:
    w = world
    url = _agent_url(w, "node-2")
    with _client(w, None) as c, pytest.raises(httpx.HTTPError):
        c.get(url)  # no client certificate: the TLS handshake is refused
    agent_dir = credentials.agent_tls_dir(str(w.cluster.nodes["node-2"].dir))
    with _client(w, agent_dir) as c:
        r = c.get(url)
        assert r.status_code == 403 and "metrics:read" in r.text, r.text
    with _client(w, credentials.admin_tls_dir(str(w.d))) as c:
        assert c.get(url).status_code == 200
        assert c.get(url.replace("/metrics", "/other")).status_code == 404


@pytest.mark.long
def test_a_killed_agent_fires_node_down(world: World) -> None:
    w = world
    assert w.cluster.kill_node("node-3")

    def firing() -> bool:
        return any(
            a["labels"]["alertname"] == "CargoholdNodeDown" and a["state"] == "firing"
            for a in w.alerts()
        )

    wait_until(firing, 60, "CargoholdNodeDown firing for node-3", 0.5)
    down = [a for a in w.alerts() if a["labels"]["alertname"] == "CargoholdNodeDown"]
    assert any(
        "node-3" in json.dumps(a["labels"])
        or w.cluster.nodes["node-3"].address in json.dumps(a["labels"])
        for a in down
    ), down
    assert (
        w.value(
            f'up{{job="cargohold-agent",instance="127.0.0.1:{w.cluster.nodes["node-3"].metrics_port}"}}'
        )
        == 0.0
    )
