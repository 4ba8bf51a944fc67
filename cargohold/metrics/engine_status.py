"""An agent's engines, as metric families: the engine's own ``status`` (the one the agent
asks for every heartbeat over the engine link; engine/volume.py ``Volume.status``) turned
into per-volume series. Pure: statuses in, families out; unknown or missing fields are
skipped, so an older engine exports what it has.

Series per volume: ~15 plain ones, 11 buckets + 2 per latency histogram (read, write,
flush, and trim/write_zeroes once used) and ~6 per replica (docs/observability.md gives
the bound a test enforces).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import Metric

from cargohold.metrics.catalog import family
from cargohold.metrics.histograms import buckets

MODES = ("RW", "WO", "ERR")
ROBUSTNESS = ("healthy", "degraded", "faulted")
OPS = ("read", "write", "flush", "trim", "write_zeroes")
# the engine's counters (Volume.counters) -> our counter metrics
COUNTERS = {
    "read_bytes": "cargohold_volume_read_bytes_total",
    "written_bytes": "cargohold_volume_written_bytes_total",
    "rebuilds": "cargohold_volume_rebuilds_total",
    "rebuild_bytes": "cargohold_volume_rebuilt_bytes_total",
    "replica_errors": "cargohold_volume_replica_errors_total",
    "checksum_errors": "cargohold_volume_checksum_errors_total",
    "repaired_blocks": "cargohold_volume_repaired_blocks_total",
    "authentication_errors": "cargohold_volume_authentication_errors_total",
    "authentication_repaired": "cargohold_volume_authentication_repaired_blocks_total",
    "scrub_passes": "cargohold_volume_scrub_passes_total",
    "scrub_bad_blocks": "cargohold_volume_scrub_bad_blocks_total",
    "rekey_rewritten_blocks": "cargohold_volume_rekey_rewritten_blocks_total",
    "power_loss_starts": "cargohold_volume_power_loss_starts_total",
    "merged_blocks": "cargohold_volume_merged_blocks_total",
}
SCRUB_REPAIRED = ("scrub_repaired_blocks", "scrub_diverged_repaired_blocks")
QOS = {
    "throttled_requests_total": "cargohold_volume_qos_throttled_requests_total",
    "throttled_seconds_total": "cargohold_volume_qos_throttled_seconds_total",
}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def volume_families(
    node: str, engines: Iterable[tuple[str, bool, Mapping[str, Any]]]
) -> list[Metric]:
    """``engines``: (volume, running, its last status) for each engine of the node."""
    names = [
        "cargohold_volume_up",
        "cargohold_volume_ops_total",
        "cargohold_volume_op_latency_seconds",
        "cargohold_volume_inflight_requests",
        "cargohold_volume_epoch",
        "cargohold_volume_generation",
        "cargohold_volume_size_bytes",
        "cargohold_volume_robustness",
        "cargohold_volume_replica_mode",
        "cargohold_volume_replica_generation_lag",
        "cargohold_volume_rebuild_done_bytes",
        "cargohold_volume_rebuild_remaining_bytes",
        "cargohold_volume_scrub_repaired_blocks_total",
        "cargohold_volume_scrub_progress_ratio",
        "cargohold_volume_scrub_last_timestamp_seconds",
        "cargohold_volume_data_keys",
        "cargohold_volume_rekey_progress_ratio",
        *COUNTERS.values(),
        *QOS.values(),
    ]
    fam: dict[str, Any] = {n: family(n) for n in names}
    for volume, running, st in engines:
        v = [node, volume]
        up = bool(running and st)
        fam["cargohold_volume_up"].add_metric(v, 1.0 if up else 0.0)
        if not up:
            continue
        _engine(fam, v, st)
    return list(fam.values())


def _engine(fam: dict[str, Any], v: list[str], st: Mapping[str, Any]) -> None:
    counters = st.get("counters") or {}
    latency = st.get("latency_log2_us") or {}
    sums = st.get("latency_sum_us") or {}
    for op in OPS:
        n = _num(counters.get(op))
        if n is None:
            continue
        fam["cargohold_volume_ops_total"].add_metric([*v, op], n)
        hist = latency.get(op)
        if isinstance(hist, Mapping):
            b = buckets(hist)
            fam["cargohold_volume_op_latency_seconds"].add_metric(
                [*v, op], b, (_num(sums.get(op)) or 0.0) / 1e6
            )
    for key, name in COUNTERS.items():
        fam[name].add_metric(v, _num(counters.get(key)) or 0.0)
    fam["cargohold_volume_scrub_repaired_blocks_total"].add_metric(
        v, sum(_num(counters.get(k)) or 0.0 for k in SCRUB_REPAIRED)
    )
    for key, name in (
        ("inflight", "cargohold_volume_inflight_requests"),
        ("epoch", "cargohold_volume_epoch"),
        ("generation", "cargohold_volume_generation"),
        ("size_bytes", "cargohold_volume_size_bytes"),
    ):
        n = _num(st.get(key))
        if n is not None:
            fam[name].add_metric(v, n)
    robustness = st.get("robustness")
    if robustness in ROBUSTNESS:
        for r in ROBUSTNESS:
            fam["cargohold_volume_robustness"].add_metric([*v, r], 1.0 if r == robustness else 0.0)
    gen = _num(st.get("generation")) or 0.0
    for i, rep in enumerate(st.get("replicas") or []):
        if not isinstance(rep, Mapping):
            continue
        rl = [*v, str(i)]
        mode = rep.get("mode")
        for m in MODES:
            fam["cargohold_volume_replica_mode"].add_metric([*rl, m], 1.0 if m == mode else 0.0)
        rgen = _num(rep.get("generation"))
        if rgen is not None:
            fam["cargohold_volume_replica_generation_lag"].add_metric(rl, max(0.0, gen - rgen))
        rb = rep.get("rebuild")
        if isinstance(rb, Mapping) and not rb.get("finished"):
            done = _num(rb.get("done_bytes")) or 0.0
            size = _num(rb.get("total_bytes")) or _num(st.get("size_bytes")) or 0.0
            fam["cargohold_volume_rebuild_done_bytes"].add_metric(rl, done)
            fam["cargohold_volume_rebuild_remaining_bytes"].add_metric(rl, max(0.0, size - done))
    scrub = st.get("scrub") if isinstance(st.get("scrub"), Mapping) else {}
    running = scrub.get("running") if isinstance(scrub, Mapping) else None
    ratio = 0.0
    if isinstance(running, Mapping):
        off, total = _num(running.get("offset")), _num(running.get("size"))
        if off is not None and total:
            ratio = min(1.0, off / total)
    fam["cargohold_volume_scrub_progress_ratio"].add_metric(v, ratio)
    last = _num(scrub.get("last_scrub_at")) if isinstance(scrub, Mapping) else None
    if last:
        fam["cargohold_volume_scrub_last_timestamp_seconds"].add_metric(v, last)
    _rekey(fam, v, st.get("rekey"))
    qos = st.get("qos")
    if isinstance(qos, Mapping):
        for key, name in QOS.items():
            q = _num(qos.get(key))
            if q is not None:
                fam[name].add_metric(v, q)


def _rekey(fam: dict[str, Any], v: list[str], rekey: Any) -> None:
    """An encrypted volume's data-key rotation (the engine status's ``rekey``, absent for a
    plain volume): the keys its engine holds and how far its sweep got."""
    if not isinstance(rekey, Mapping):
        return
    keys = _num(rekey.get("keys"))
    if keys is not None:
        fam["cargohold_volume_data_keys"].add_metric(v, keys)
    state = rekey.get("state")
    ratio = 1.0 if state == "done" else 0.0
    if state in ("running", "failed"):
        done, total = _num(rekey.get("groups_done")), _num(rekey.get("groups_total"))
        ratio = min(1.0, done / total) if done is not None and total else 0.0
    fam["cargohold_volume_rekey_progress_ratio"].add_metric(v, ratio)
