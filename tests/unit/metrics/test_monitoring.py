"""deploy/monitoring/ and docs/observability.md against the metrics catalogue: every PromQL
expression of the alerting rules and the Grafana dashboard names only series cargohold
exports (or Prometheus's own ``up``), parses (``promtool check rules``, when promtool is
installed: scripts/setup.sh installs Debian's prometheus), and the docs' metrics table is
the catalogue. And the scrape configuration ``cargohold up`` writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cargohold.launcher import credentials, monitoring
from cargohold.launcher.cluster import LocalCluster
from cargohold.metrics import catalog

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "deploy/monitoring"
RULES = MONITORING / "cargohold-rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not installed (Debian's prometheus package: scripts/setup.sh)"
DASHBOARD_VARS = {"$volume": ".*", "${volume}": ".*"}


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            out.append((var["name"], var["definition"]))
    return out


def series_named(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers of ours (``cargohold_``), and
    ``up``/``scrape_*`` when used as a selector."""
    names = set(re.findall(r"\bcargohold_[a-z0-9_]+", expr))
    names |= {m for m in re.findall(r"\b(up|scrape_[a-z_]+)\s*[{\[)]", expr)}
    return names


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_expression_names_only_metrics_that_exist(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    assert len(exprs) >= 10
    known = catalog.known_series()
    for title, expr in exprs:
        named = series_named(expr)
        assert named, f"{title}: names no metric: {expr}"
        unknown = named - known
        assert not unknown, f"{title}: {sorted(unknown)} are not exported (catalog.py)"


def test_the_rules_cover_what_issue_20_asks_for() -> None:
    alerts = {a for a, _ in rule_exprs()}
    assert {
        "CargoholdVolumeDegraded",
        "CargoholdVolumeFaulted",
        "CargoholdRebuildNotProgressing",
        "CargoholdReplicaLagging",
        "CargoholdChecksumErrors",
        "CargoholdDiskNearlyFull",
        "CargoholdNodeDown",
        "CargoholdNoLeader",
        "CargoholdScrubOverdue",
        "CargoholdBackupOverdue",
    } <= alerts


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["targets"] and all(t["refId"] for t in p["targets"]), p["title"]


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_the_rules_and_every_dashboard_expression(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # the dashboard's expressions, as recording rules: promtool parses each
    exprs = []
    for title, expr in dashboard_exprs():
        for var, value in DASHBOARD_VARS.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):  # Grafana's, not PromQL: its metric only
            expr = expr.removeprefix("label_values(").split(",")[0]
        exprs.append(
            {"record": "cargohold:dashboard:check", "expr": expr, "labels": {"panel": title}}
        )
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": exprs}]}))
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(f)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_docs_metrics_table_is_the_catalogue() -> None:
    doc = (ROOT / "docs/observability.md").read_text()
    rows = re.findall(r"^\| `(cargohold_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", doc, re.M)
    got = {name: (kind, tuple(re.findall(r"`([a-z_]+)`", labels))) for name, kind, labels in rows}
    want = {s.name: (s.kind, s.labels) for s in catalog.SPECS}
    assert got == want


def test_the_monitors_use_the_rules_job_names() -> None:
    docs = list(yaml.safe_load_all((MONITORING / "monitors.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs if d}
    assert set(kinds) == {"ServiceMonitor", "PodMonitor"}
    pod = kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert {"targetLabel": "job", "replacement": monitoring.AGENT_JOB} in pod["relabelings"]
    assert f'job="{monitoring.AGENT_JOB}"' in RULES.read_text()
    # joined agents' certificates name their addresses: Prometheus verifies them
    assert pod["tlsConfig"].get("insecureSkipVerify") is not True


def _cluster(tmp_path: Path, plaintext: bool = False) -> LocalCluster:
    return LocalCluster.create(str(tmp_path / "c"), nodes=3, plaintext=plaintext)


def test_the_scrape_config_of_a_local_cluster(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    cfg: dict[str, Any] = monitoring.scrape_config(cluster)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {monitoring.MANAGER_JOB, monitoring.AGENT_JOB}
    agents = jobs[monitoring.AGENT_JOB]["static_configs"][0]["targets"]
    ports = [n.metrics_port for n in cluster.nodes.values()]
    assert agents == [f"127.0.0.1:{p}" for p in ports] and len(set(ports)) == 3
    assert jobs[monitoring.MANAGER_JOB]["static_configs"][0]["targets"] == [
        m.listen for m in cluster.managers
    ]
    tls = jobs[monitoring.AGENT_JOB]["tls_config"]
    assert tls["cert_file"] == str(credentials.prometheus_tls_dir(cluster.dir) / "tls.crt")
    assert jobs[monitoring.AGENT_JOB]["scheme"] == "https"
    for job in jobs.values():  # every target's certificate names its address: verified
        assert "insecure_skip_verify" not in job["tls_config"]
    plain = monitoring.scrape_config(_cluster(tmp_path / "p", plaintext=True))
    agent_job = next(j for j in plain["scrape_configs"] if j["job_name"] == monitoring.AGENT_JOB)
    assert agent_job["scheme"] == "http" and "tls_config" not in agent_job


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_takes_the_written_scrape_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    cluster = _cluster(tmp_path)
    tls = credentials.prometheus_tls_dir(cluster.dir)
    tls.mkdir(parents=True)
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tls / name).write_text("")  # promtool checks that the files exist
    path = monitoring.write_scrape_config(cluster)
    out = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
