"""The Prometheus scrape configuration ``cargohold up`` writes for its local cluster.

    DIR/prometheus/prometheus.yml   two jobs: cargohold-manager (each manager's /metrics)
                                    and cargohold-agent (each node's agent's /metrics)
    DIR/prometheus/tls/             reader/prometheus: the client certificate both use

Start a Prometheus on it as it is (``prometheus --config.file DIR/prometheus/prometheus.yml``)
or copy its jobs into your own. The TLS client settings name the certificate files, so a
certificate renewed by the next ``up`` is picked up without editing anything. Alerting rules
are not included: point ``rule_files`` at deploy/monitoring/cargohold-rules.yml
(docs/observability.md). Called by ``LocalCluster.up`` (cluster.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import yaml

from cargohold import durable
from cargohold.launcher import credentials

if TYPE_CHECKING:
    from cargohold.launcher.cluster import LocalCluster

SCRAPE_INTERVAL = "15s"
MANAGER_JOB = "cargohold-manager"
AGENT_JOB = "cargohold-agent"


def scrape_config(cluster: LocalCluster, interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """The configuration (as a dict) for ``cluster``: its managers and its agents that
    have a metrics port."""
    tls_dir = credentials.prometheus_tls_dir(cluster.dir)
    tls = {
        "ca_file": str(tls_dir / "ca.crt"),
        "cert_file": str(tls_dir / "tls.crt"),
        "key_file": str(tls_dir / "tls.key"),
        "min_version": "TLS13",
    }
    agents = [f"{n.address}:{n.metrics_port}" for n in cluster.nodes.values() if n.metrics_port]
    jobs: list[dict[str, Any]] = [
        {
            "job_name": MANAGER_JOB,
            "scheme": "https",
            "tls_config": tls,
            "static_configs": [{"targets": [m.listen for m in cluster.managers]}],
        }
    ]
    if agents:
        agent_job: dict[str, Any] = {
            "job_name": AGENT_JOB,
            "static_configs": [{"targets": agents}],
        }
        if cluster.plaintext:  # --plaintext: the agents serve plain HTTP to anyone
            agent_job["scheme"] = "http"
        else:
            agent_job.update(scheme="https", tls_config=tls)
        jobs.append(agent_job)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs,
    }


def write_scrape_config(cluster: LocalCluster) -> str:
    """Write DIR/prometheus/prometheus.yml; -> its path."""
    path = os.path.join(cluster.dir, "prometheus", "prometheus.yml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    head = (
        "# Written by `cargohold up` for the local cluster in "
        f"{cluster.dir}; rewritten at every up.\n"
        "# prometheus --config.file THIS_FILE (docs/observability.md)\n"
    )
    body = yaml.safe_dump(scrape_config(cluster), sort_keys=False)
    durable.write_atomic(path, (head + body).encode(), 0o644)
    return path
