"""Every metric cargohold exports: name, type, labels and help, in one table.

The collectors build their families from these specs only (``family``), so a name, a type
or a label set cannot drift between the code, docs/observability.md (a test compares the
two) and deploy/monitoring/ (a test checks every PromQL expression there names a metric of
this table). Conventions: the ``cargohold_`` prefix, counters end in ``_total``, units in
the name (``_seconds``, ``_bytes``); labels are bounded: a volume, node, disk, replica
index, op, route template, state — never a URL, a request id or an error message.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

Kind = Literal["counter", "gauge", "histogram"]
Source = Literal["engine", "node", "manager"]


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str  # counters: with ``_total`` (prometheus_client's families take it without)
    kind: Kind
    labels: tuple[str, ...]
    help: str
    source: Source  # who exports it: the node's agent (engine, node) or the manager


V = ("node", "volume")
R = ("node", "volume", "replica")
D = ("node", "disk")

# one line per metric reads as a table: the formatter leaves it alone
# fmt: off
SPECS: tuple[Spec, ...] = (
    # --- engines, per volume (gathered by the node's agent) --------------------------------
    Spec("cargohold_volume_up", "gauge", V, "1 when the volume's engine runs and answers its agent", "engine"),
    Spec("cargohold_volume_ops_total", "counter", (*V, "op"), "Requests the engine completed, by op (read, write, flush, trim, write_zeroes)", "engine"),
    Spec("cargohold_volume_read_bytes_total", "counter", V, "Bytes read by the volume's consumers", "engine"),
    Spec("cargohold_volume_written_bytes_total", "counter", V, "Bytes written by the volume's consumers (acknowledged by every replica of the write set)", "engine"),
    Spec("cargohold_volume_op_latency_seconds", "histogram", (*V, "op"), "Latency of the engine's requests, from taking a request to its answer (power-of-two buckets)", "engine"),
    Spec("cargohold_volume_inflight_requests", "gauge", V, "Requests the engine is carrying out now (queue depth)", "engine"),
    Spec("cargohold_volume_epoch", "gauge", V, "The engine's epoch (a new engine has a higher one)", "engine"),
    Spec("cargohold_volume_generation", "gauge", V, "The last generation (mutation number) the engine handed out", "engine"),
    Spec("cargohold_volume_size_bytes", "gauge", V, "The volume's size", "engine"),
    Spec("cargohold_volume_robustness", "gauge", (*V, "robustness"), "1 for the engine's view of the volume's robustness (healthy, degraded, faulted)", "engine"),
    Spec("cargohold_volume_replica_mode", "gauge", (*R, "mode"), "1 for the replica's mode in the engine: RW (current), WO (rebuilding), ERR (dropped)", "engine"),
    Spec("cargohold_volume_replica_generation_lag", "gauge", R, "Generations the replica is behind the engine", "engine"),
    Spec("cargohold_volume_rebuild_done_bytes", "gauge", R, "Bytes of the volume a running rebuild has covered", "engine"),
    Spec("cargohold_volume_rebuild_remaining_bytes", "gauge", R, "Bytes of the volume a running rebuild has still to cover", "engine"),
    Spec("cargohold_volume_rebuilds_total", "counter", V, "Rebuilds the engine finished", "engine"),
    Spec("cargohold_volume_rebuilt_bytes_total", "counter", V, "Bytes the engine's finished rebuilds copied", "engine"),
    Spec("cargohold_volume_replica_errors_total", "counter", V, "Replicas dropped from the write set because a request failed, timed out or missed a mutation (one per replica lost)", "engine"),
    Spec("cargohold_volume_power_loss_starts_total", "counter", V, "Engine starts that accepted being below the manager's record because every replica answered and every current one had lost power (the writes after their last FLUSH are gone)", "engine"),
    Spec("cargohold_volume_merged_blocks_total", "counter", V, "Blocks the source of a start in doubt took from another current replica whose record of them was newer (the merge, before it was marked current)", "engine"),
    Spec("cargohold_volume_checksum_errors_total", "counter", V, "Reads a replica answered with a checksum error (read again elsewhere)", "engine"),
    Spec("cargohold_volume_repaired_blocks_total", "counter", V, "Blocks repaired in place after a checksum error on read", "engine"),
    Spec("cargohold_volume_authentication_errors_total", "counter", V, "Blocks of an encrypted volume that failed authentication on the copy read first (read again elsewhere)", "engine"),
    Spec("cargohold_volume_authentication_repaired_blocks_total", "counter", V, "Blocks of an encrypted volume written back from a replica's copy that authenticates", "engine"),
    Spec("cargohold_volume_scrub_passes_total", "counter", V, "Scrub passes finished", "engine"),
    Spec("cargohold_volume_scrub_bad_blocks_total", "counter", V, "Bad blocks scrub found", "engine"),
    Spec("cargohold_volume_scrub_repaired_blocks_total", "counter", V, "Blocks scrub repaired (bad or diverged)", "engine"),
    Spec("cargohold_volume_scrub_progress_ratio", "gauge", V, "How far the running scrub pass got (0..1; 0 when none runs)", "engine"),
    Spec("cargohold_volume_scrub_last_timestamp_seconds", "gauge", V, "When the volume's last scrub pass ended (Unix time; absent before the first)", "engine"),
    Spec("cargohold_volume_data_keys", "gauge", V, "Data keys an encrypted volume's engine holds (more than 1 while a data-key rotation runs or older generations are kept)", "engine"),
    Spec("cargohold_volume_rekey_progress_ratio", "gauge", V, "How far an encrypted volume's data-key rotation sweep got (0..1; 1 once done, 0 before the first)", "engine"),
    Spec("cargohold_volume_rekey_rewritten_blocks_total", "counter", V, "Blocks the data-key rotation sweeps rewrote under the newest key", "engine"),
    Spec("cargohold_volume_qos_throttled_requests_total", "counter", V, "Requests QoS held back", "engine"),
    Spec("cargohold_volume_qos_throttled_seconds_total", "counter", V, "Seconds QoS held requests back", "engine"),
    # --- the node: its disks, its replica server, its agent ------------------------------
    Spec("cargohold_disk_capacity_bytes", "gauge", D, "What the disk offers to replicas (the node's configuration)", "node"),
    Spec("cargohold_disk_filesystem_size_bytes", "gauge", D, "Size of the filesystem the disk's directory lives on", "node"),
    Spec("cargohold_disk_allocated_bytes", "gauge", D, "Bytes in use on the disk's filesystem", "node"),
    Spec("cargohold_disk_free_bytes", "gauge", D, "Bytes free on the disk's filesystem", "node"),
    Spec("cargohold_disk_replicas", "gauge", D, "Replicas on the disk", "node"),
    Spec("cargohold_disk_ops_total", "counter", D, "Requests the replica server answered for replicas on the disk", "node"),
    Spec("cargohold_disk_errors_total", "counter", D, "Requests on the disk's replicas answered with an error", "node"),
    Spec("cargohold_disk_flush_latency_seconds", "histogram", D, "FLUSH (fdatasync) latency on the disk's replicas (power-of-two buckets)", "node"),
    Spec("cargohold_replica_server_requests_total", "counter", ("node",), "Requests the node's replica server took", "node"),
    Spec("cargohold_replica_server_errors_total", "counter", ("node",), "Requests the node's replica server answered with an error", "node"),
    Spec("cargohold_replica_server_refused_total", "counter", ("node",), "Requests or connections the replica server refused (authorization, fencing)", "node"),
    Spec("cargohold_replica_server_up", "gauge", ("node",), "1 when the node's replica server answered its agent's last LIST", "node"),
    Spec("cargohold_agent_engines", "gauge", ("node",), "Engines the agent runs", "node"),
    Spec("cargohold_agent_manager_reachable", "gauge", ("node",), "1 when the manager answered the agent's last heartbeat", "node"),
    Spec("cargohold_node_qos_budget_iops", "gauge", ("node",), "IOPS budget the node latency target holds the busy volumes to, divided by weight (absent while it holds none)", "node"),
    Spec("cargohold_node_service_latency_seconds", "gauge", ("node",), "Mean service latency of the node's engines over the last second (past the QoS gate to the replicas' answer; with a node latency target)", "node"),
    Spec("cargohold_node_latency_target_seconds", "gauge", ("node",), "The node latency target (agent setting node_latency_target; absent when off)", "node"),
    # --- the manager -----------------------------------------------------------------------
    Spec("cargohold_api_request_duration_seconds", "histogram", ("method", "route", "code"), "API requests by route template, method and status class (2xx, 4xx, 5xx)", "manager"),
    Spec("cargohold_reconciler_run_duration_seconds", "histogram", ("reconciler",), "Duration of one pass of a reconciler (the leader's)", "manager"),
    Spec("cargohold_reconciler_errors_total", "counter", ("reconciler",), "Reconciler passes that failed", "manager"),
    Spec("cargohold_manager_leader", "gauge", ("manager",), "1 when this manager is the leader (it runs the reconcilers)", "manager"),
    Spec("cargohold_volumes", "gauge", ("state", "robustness"), "Volumes by state and robustness, as the manager records them", "manager"),
    Spec("cargohold_volume_info", "gauge", ("volume", "state", "robustness"), "1 per volume, with its state and robustness as labels", "manager"),
    Spec("cargohold_node_up", "gauge", ("node",), "1 when the node's agent holds its heartbeat lease", "manager"),
    Spec("cargohold_backup_last_success_timestamp_seconds", "gauge", ("volume",), "When the volume's newest completed backup was taken (Unix time)", "manager"),
    Spec("cargohold_standby_lag_seconds", "gauge", ("volume",), "How much older a standby's applied backup is than the source's newest (0: in sync; absent before the first apply)", "manager"),
    Spec("cargohold_standby_data_age_seconds", "gauge", ("volume",), "Now minus the standby's applied backup's time: the data lost if the source died now (absent before the first apply)", "manager"),
    Spec("cargohold_standby_backups_behind", "gauge", ("volume",), "Backups of the source the standby has not applied yet", "manager"),
    Spec("cargohold_standby_since_poll_seconds", "gauge", ("volume",), "Seconds since the standby last read its target's catalog (grows while the target is unreachable)", "manager"),
    Spec("cargohold_events_total", "counter", ("kind",), "Events this manager recorded, by kind", "manager"),
)
# fmt: on

BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}

# Prometheus's own series the rules and dashboards may use besides ours
PROMETHEUS_BUILTINS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def series_names(spec: Spec) -> tuple[str, ...]:
    """The names of the series a metric produces (a histogram's _bucket, _sum, _count)."""
    if spec.kind == "histogram":
        return tuple(spec.name + s for s in ("_bucket", "_sum", "_count"))
    return (spec.name,)


def known_series() -> frozenset[str]:
    """Every series name a scrape of cargohold can show, and Prometheus's own."""
    return frozenset(n for s in SPECS for n in series_names(s)) | PROMETHEUS_BUILTINS


def family(name: str) -> Any:
    """An empty family of metric ``name`` (KeyError for a name not in the table): a
    Counter-, Gauge- or HistogramMetricFamily (each has its own ``add_metric``)."""
    s = BY_NAME[name]
    if s.kind == "counter":
        return CounterMetricFamily(s.name.removesuffix("_total"), s.help, labels=s.labels)
    if s.kind == "gauge":
        return GaugeMetricFamily(s.name, s.help, labels=s.labels)
    return HistogramMetricFamily(s.name, s.help, labels=s.labels)
