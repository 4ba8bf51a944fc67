"""A node's disks and replica server, as metric families (pure: numbers in, families out).

``server`` is what the replica server adds to its LIST answer for the node's agent
(replica/session.py ``op_list``): ``{"counters": {requests, errors, refused, ...},
"disks": {path: {"ops": n, "errors": n, "flush_log2_us": {k: n}, "flush_sum_us": n}}}``.
``usage`` is each disk's filesystem (size, free) as the agent measured it (statvfs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import Metric

from cargohold.metrics.catalog import family
from cargohold.metrics.histograms import buckets


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else 0.0


def node_families(
    node: str,
    disks: Iterable[tuple[str, str, int]],
    usage: Mapping[str, tuple[int, int]],
    replicas: Mapping[str, int],
    server: Mapping[str, Any] | None,
    engines: int,
    manager_reachable: bool,
    latency: Mapping[str, float | None] | None = None,
) -> list[Metric]:
    """``disks``: (name, path, capacity) of each disk; ``usage``: path -> (filesystem size,
    free); ``replicas``: path -> replicas on it; ``server``: the replica server's numbers,
    None when it did not answer; ``latency``: the node latency target's ``target_us``,
    ``latency_us`` and ``budget`` (IOPS; inf or None: none held), None when it is off."""
    cap = family("cargohold_disk_capacity_bytes")
    fs_size = family("cargohold_disk_filesystem_size_bytes")
    used = family("cargohold_disk_allocated_bytes")
    free = family("cargohold_disk_free_bytes")
    nrep = family("cargohold_disk_replicas")
    ops = family("cargohold_disk_ops_total")
    errs = family("cargohold_disk_errors_total")
    flush = family("cargohold_disk_flush_latency_seconds")
    per_disk = (server or {}).get("disks") or {}
    for name, path, capacity in disks:
        d = [node, name]
        cap.add_metric(d, float(capacity))
        if path in usage:
            size, avail = usage[path]
            fs_size.add_metric(d, float(size))
            used.add_metric(d, float(max(0, size - avail)))
            free.add_metric(d, float(avail))
        nrep.add_metric(d, float(replicas.get(path, 0)))
        st = per_disk.get(path)
        if server is not None:
            st = st if isinstance(st, Mapping) else {}
            ops.add_metric(d, _num(st.get("ops")))
            errs.add_metric(d, _num(st.get("errors")))
            hist = st.get("flush_log2_us")
            flush.add_metric(
                d,
                buckets(hist if isinstance(hist, Mapping) else {}),
                _num(st.get("flush_sum_us")) / 1e6,
            )
    out: list[Metric] = [cap, fs_size, used, free, nrep, ops, errs, flush]
    up = family("cargohold_replica_server_up")
    up.add_metric([node], 0.0 if server is None else 1.0)
    out.append(up)
    if server is not None:
        c = server.get("counters") or {}
        for key, metric in (
            ("requests", "cargohold_replica_server_requests_total"),
            ("errors", "cargohold_replica_server_errors_total"),
            ("refused", "cargohold_replica_server_refused_total"),
        ):
            f = family(metric)
            f.add_metric([node], _num(c.get(key)))
            out.append(f)
    eng = family("cargohold_agent_engines")
    eng.add_metric([node], float(engines))
    reach = family("cargohold_agent_manager_reachable")
    reach.add_metric([node], 1.0 if manager_reachable else 0.0)
    out += [eng, reach]
    if latency is not None:
        for key, metric, scale in (
            ("target_us", "cargohold_node_latency_target_seconds", 1e-6),
            ("latency_us", "cargohold_node_service_latency_seconds", 1e-6),
            ("budget", "cargohold_node_qos_budget_iops", 1.0),
        ):
            f = family(metric)
            x = latency.get(key)
            if isinstance(x, int | float) and math.isfinite(x):
                f.add_metric([node], float(x) * scale)
            out.append(f)
    return out
