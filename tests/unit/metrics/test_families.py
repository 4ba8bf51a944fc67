"""The metrics package: the engine's status and a node's numbers as Prometheus series,
parsed back from the text exposition with prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cargohold.metrics import catalog
from cargohold.metrics.engine_status import volume_families
from cargohold.metrics.exposition import render_families
from cargohold.metrics.histograms import LE_US, buckets
from cargohold.metrics.node_stats import node_families


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def engine_status(volume: str = "v1", replicas: int = 3) -> dict[str, Any]:
    """An engine's status as engine/volume.py's Volume.status gives it (and control.py adds
    ``scrub``): 1000 writes, 500 reads, a replica rebuilding."""
    reps: list[dict[str, Any]] = [
        {"id": f"{volume}-r{i}", "mode": "RW", "generation": 1000} for i in range(replicas)
    ]
    reps[-1] = {
        "id": f"{volume}-r{replicas - 1}",
        "mode": "WO",
        "generation": 400,
        "rebuild": {"done_bytes": 1 << 20, "copied_bytes": 1 << 20},
    }
    return {
        "volume": volume,
        "epoch": 7,
        "size_bytes": 4 << 20,
        "generation": 1000,
        "robustness": "degraded",
        "replicas": reps,
        "inflight": 3,
        "counters": {
            "write": 1000,
            "read": 500,
            "flush": 2,
            "written_bytes": 1000 * 4096,
            "read_bytes": 500 * 4096,
            "checksum_errors": 1,
            "repaired_blocks": 1,
            "scrub_repaired_blocks": 2,
            "scrub_diverged_repaired_blocks": 1,
            "rekey_rewritten_blocks": 77,
        },
        # writes: 900 at 64..127 µs (bucket 6), 100 at 2^20 µs (~1 s, bucket 20)
        "latency_log2_us": {"write": {"6": 900, "20": 100}, "read": {"3": 500}, "flush": {"9": 2}},
        "latency_sum_us": {"write": 900 * 100 + 100 * 1_500_000, "read": 500 * 10, "flush": 1000},
        "scrub": {
            "running": {"pass": 3, "offset": 1 << 20, "size": 4 << 20},
            "last_scrub_at": 1.7e9,
        },
        "qos": {"throttled_requests_total": 5, "throttled_seconds_total": 0.25},
        "rekey": {"state": "running", "keys": 2, "groups_done": 3, "groups_total": 12},
    }


def test_log2_buckets_become_cumulative_prometheus_buckets() -> None:
    b = buckets({"6": 900, "20": 100, 40: 1})
    assert b[-1] == ("+Inf", 1001.0)
    les = [le for le, _ in b[:-1]]
    assert les == [repr(x / 1e6) for x in LE_US]
    # bucket 6 holds [64, 128) µs: counted under the first bound >= 128 µs (256 µs)
    assert dict(b)[repr(256 / 1e6)] == 900.0
    assert dict(b)[repr(64 / 1e6)] == 0.0
    # bucket 20 ([1.05 s, 2.1 s)) under 4.19 s; bucket 40 only in +Inf
    assert dict(b)[repr((1 << 22) / 1e6)] == 1000.0
    assert [n for _, n in b] == sorted(n for _, n in b)  # cumulative
    assert buckets({"x": 3, None: 1})[-1] == ("+Inf", 0.0)  # junk keys are skipped


def test_engine_status_as_series() -> None:
    text = render_families(volume_families("node-1", [("v1", True, engine_status())]))
    s = samples(text)
    v = (("node", "node-1"), ("volume", "v1"))

    def get(name: str, **labels: str) -> float:
        return s[(name, tuple(sorted((*v, *labels.items()))))]

    assert get("cargohold_volume_up") == 1.0
    assert get("cargohold_volume_ops_total", op="write") == 1000.0
    assert get("cargohold_volume_ops_total", op="read") == 500.0
    assert get("cargohold_volume_written_bytes_total") == 1000 * 4096
    assert get("cargohold_volume_op_latency_seconds_count", op="write") == 1000.0
    assert get("cargohold_volume_op_latency_seconds_sum", op="write") == pytest.approx(150.09)
    assert get("cargohold_volume_op_latency_seconds_bucket", op="write", le="0.000256") == 900
    assert get("cargohold_volume_inflight_requests") == 3.0
    assert get("cargohold_volume_epoch") == 7.0
    assert get("cargohold_volume_robustness", robustness="degraded") == 1.0
    assert get("cargohold_volume_robustness", robustness="healthy") == 0.0
    assert get("cargohold_volume_replica_mode", replica="2", mode="WO") == 1.0
    assert get("cargohold_volume_replica_mode", replica="0", mode="RW") == 1.0
    assert get("cargohold_volume_replica_generation_lag", replica="2") == 600.0
    assert get("cargohold_volume_replica_generation_lag", replica="0") == 0.0
    assert get("cargohold_volume_rebuild_done_bytes", replica="2") == 1 << 20
    assert get("cargohold_volume_rebuild_remaining_bytes", replica="2") == 3 << 20
    assert get("cargohold_volume_checksum_errors_total") == 1.0
    assert get("cargohold_volume_scrub_repaired_blocks_total") == 3.0
    assert get("cargohold_volume_scrub_progress_ratio") == 0.25
    assert get("cargohold_volume_scrub_last_timestamp_seconds") == 1.7e9
    assert get("cargohold_volume_qos_throttled_requests_total") == 5.0
    assert get("cargohold_volume_qos_throttled_seconds_total") == 0.25
    assert get("cargohold_volume_data_keys") == 2.0
    assert get("cargohold_volume_rekey_progress_ratio") == 0.25
    assert get("cargohold_volume_rekey_rewritten_blocks_total") == 77.0
    # every series is of a metric in the catalogue
    known = catalog.known_series()
    assert {name for name, _ in s} <= known


def test_an_engine_down_or_with_a_broken_status_exports_what_it_can() -> None:
    broken = {"counters": {"write": "many"}, "replicas": ["x", {"mode": 3}], "scrub": 5}
    text = render_families(
        volume_families(
            "n", [("down", False, {}), ("odd", True, broken), ("old", True, {"epoch": 1})]
        )
    )
    s = samples(text)
    assert s[("cargohold_volume_up", (("node", "n"), ("volume", "down")))] == 0.0
    assert s[("cargohold_volume_up", (("node", "n"), ("volume", "odd")))] == 1.0
    assert not any(name == "cargohold_volume_ops_total" for name, _ in s)


def test_a_data_key_rotation_as_series() -> None:
    """Done: 1; never ran (one key, idle): 0; a plain volume (no ``rekey``): no series."""

    def progress(rekey: Any) -> dict[str, float]:
        st = engine_status()
        if rekey is None:
            del st["rekey"]
        else:
            st["rekey"] = rekey
        s = samples(render_families(volume_families("n", [("v", True, st)])))
        return {
            name: value
            for (name, _), value in s.items()
            if name in ("cargohold_volume_data_keys", "cargohold_volume_rekey_progress_ratio")
        }

    done = progress({"state": "done", "keys": 2, "groups_done": 12, "groups_total": 12})
    assert done == {"cargohold_volume_data_keys": 2.0, "cargohold_volume_rekey_progress_ratio": 1.0}
    idle = progress({"state": "idle", "keys": 1, "groups_done": 0, "groups_total": 0})
    assert idle == {"cargohold_volume_data_keys": 1.0, "cargohold_volume_rekey_progress_ratio": 0.0}
    failed = progress({"state": "failed", "keys": 2, "groups_done": 6, "groups_total": 12})
    assert failed["cargohold_volume_rekey_progress_ratio"] == 0.5
    assert progress({"state": "running", "keys": "x", "groups_total": 0}) == {
        "cargohold_volume_rekey_progress_ratio": 0.0
    }
    assert progress(None) == {}


def test_node_series() -> None:
    server = {
        "counters": {"requests": 10, "errors": 1, "refused": 2},
        "disks": {"/d0": {"ops": 9, "errors": 1, "flush_log2_us": {"10": 4}, "flush_sum_us": 4000}},
    }
    text = render_families(
        node_families(
            "node-1",
            [("disk-0", "/d0", 100 << 30), ("disk-1", "/d1", 50 << 30)],
            {"/d0": (200 << 30, 150 << 30)},
            {"/d0": 3},
            server,
            2,
            True,
        )
    )
    s = samples(text)
    d0 = (("disk", "disk-0"), ("node", "node-1"))
    assert s[("cargohold_disk_capacity_bytes", d0)] == 100 << 30
    assert s[("cargohold_disk_allocated_bytes", d0)] == 50 << 30
    assert s[("cargohold_disk_free_bytes", d0)] == 150 << 30
    assert s[("cargohold_disk_replicas", d0)] == 3
    assert s[("cargohold_disk_ops_total", d0)] == 9
    assert s[("cargohold_disk_flush_latency_seconds_count", d0)] == 4
    assert s[("cargohold_disk_flush_latency_seconds_sum", d0)] == 0.004
    assert s[("cargohold_replica_server_up", (("node", "node-1"),))] == 1.0
    assert s[("cargohold_replica_server_refused_total", (("node", "node-1"),))] == 2.0
    # the replica server did not answer: no per-disk op counts, up 0
    s = samples(render_families(node_families("n", [("d", "/d", 1)], {}, {}, None, 0, False)))
    assert s[("cargohold_replica_server_up", (("node", "n"),))] == 0.0
    assert not any(name == "cargohold_disk_ops_total" for name, _ in s)


def test_series_per_volume_and_per_node_stay_bounded() -> None:
    """The cap docs/observability.md states: at most 120 series per volume (3 replicas,
    every op used) and 40 per disk; N volumes make exactly N times the series of one."""

    def count(n: int) -> int:
        engines = [(f"v{i}", True, engine_status(f"v{i}")) for i in range(n)]
        for _, _, st in engines:
            st["counters"].update(trim=1, write_zeroes=1)
            st["latency_log2_us"].update(trim={"1": 1}, write_zeroes={"1": 1})
        return len(samples(render_families(volume_families("n", engines))))

    one, ten = count(1), count(10)
    assert ten == 10 * one
    assert one <= 120, one
    disks = [(f"d{i}", f"/d{i}", 1) for i in range(4)]
    server = {"disks": {f"/d{i}": {"ops": 1} for i in range(4)}, "counters": {}}
    per_node = len(samples(render_families(node_families("n", disks, {}, {}, server, 0, True))))
    assert per_node <= 40 * len(disks), per_node


def test_catalogue_follows_the_conventions() -> None:
    for spec in catalog.SPECS:
        assert spec.name.startswith("cargohold_"), spec.name
        assert (spec.kind == "counter") == spec.name.endswith("_total"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds"), spec.name
        # bounded labels only
        assert set(spec.labels) <= {
            "node",
            "volume",
            "replica",
            "disk",
            "op",
            "mode",
            "robustness",
            "state",
            "method",
            "route",
            "code",
            "reconciler",
            "manager",
            "kind",
        }, spec
    assert len(catalog.BY_NAME) == len(catalog.SPECS)
