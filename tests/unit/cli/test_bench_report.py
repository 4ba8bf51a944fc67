"""``cargohold bench``'s figures from its runs (cli/bench_report.py): medians and spread, the
baselines' verdict, the ratios to the local file, nbdkit and Ceph's anchor; and the pure
helpers beside it (the local file's fio command, a local cluster's PIDs from agent.json)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from cargohold.cli import bench_report, bench_systems, fio
from cargohold.cli.main import app


def row(ops: float, p99: float = 1000.0, cpu: float | None = None) -> dict:
    r = {
        "ops_per_s": ops,
        "mb_per_s": ops * 4096 / 1e6,
        "lat_mean_us": 500.0,
        "lat_p50_us": 400.0,
        "lat_p99_us": p99,
        "lat_p999_us": 2 * p99,
        "ios": int(ops * 10),
        "load1": 1.0,
    }
    if cpu is not None:
        r["cpu_us_per_op"] = cpu
    return r


def test_medians_spread_and_ratios() -> None:
    runs = {
        "randwrite-4k-qd16": {
            "target": [row(10e3, 3000, 200), row(12e3, 2000, 180), row(11e3, 2500, 220)],
            "local": [row(50e3), row(52e3), row(54e3)],
            "nbdkit": [row(44e3, 1000, 20), row(46e3, 1000, 22), row(45e3, 1000, 21)],
        }
    }
    s = bench_report.summarize(runs)["randwrite-4k-qd16"]
    t = s["systems"]["target"]
    assert t["ops_per_s"] == 11e3 and t["lat_p99_us"] == 2500 and t["cpu_us_per_op"] == 200
    assert t["ops_spread"]["spread"] == pytest.approx(2e3 / 11e3)
    assert t["runs"] == [10e3, 12e3, 11e3]
    assert "cpu_us_per_op" not in s["systems"]["local"]  # no server: nothing measured
    assert s["verdict"] == {"valid": True, "reasons": []}
    assert s["ratios"]["vs_local"] == pytest.approx(11 / 52)
    assert s["ratios"]["vs_nbdkit"] == pytest.approx(11 / 45)
    assert s["ratios"]["p99_vs_nbdkit"] == pytest.approx(2.5)
    assert s["ratios"]["vs_ceph"] == pytest.approx(11e3 / 1380)
    assert bench_report.all_valid({"randwrite-4k-qd16": s}) is True


def test_a_stalled_nbdkit_makes_the_workload_invalid() -> None:
    runs = {
        "seqwrite-1m-qd4": {
            "target": [row(500.0)],
            "local": [row(2000.0), row(2100.0)],
            "nbdkit": [row(700.0), row(720.0)],  # a third of the local file: stalled
        }
    }
    s = bench_report.summarize(runs)
    v = s["seqwrite-1m-qd4"]["verdict"]
    assert v["valid"] is False and "stalled" in v["reasons"][0]
    assert s["seqwrite-1m-qd4"]["ratios"]["vs_ceph"] is None  # not Ceph's workload
    assert bench_report.all_valid(s) is False
    assert bench_report.verdict_text(v).startswith("INVALID: nbdkit's median")


def test_a_baseline_run_out_of_band_is_invalid() -> None:
    runs = {"randread-4k-qd1": {"target": [row(1e3)], "local": [row(10e3), row(10e3), row(6e3)]}}
    v = bench_report.summarize(runs)["randread-4k-qd1"]["verdict"]
    assert v["valid"] is False and "local: a run at 6,000 is -40%" in v["reasons"][0]


def test_without_baselines_nothing_is_checked_and_no_ratio_invented() -> None:
    s = bench_report.summarize({"randwrite-4k-qd16": {"target": [row(3e3)]}})
    w = s["randwrite-4k-qd16"]
    assert w["verdict"]["valid"] is None and bench_report.all_valid(s) is None
    assert w["ratios"]["vs_local"] is None and w["ratios"]["vs_nbdkit"] is None
    assert w["ratios"]["vs_ceph"] == pytest.approx(3e3 / 1380)
    assert bench_report.verdict_text(w["verdict"]) == "not checked (no baselines)"


def test_order_rotates_so_no_system_always_runs_first() -> None:
    assert [bench_report.order(3, r) for r in range(4)] == [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [0, 1, 2],
    ]
    assert bench_report.order(0, 5) == []
    with pytest.raises(ValueError):
        bench_report.median_row([])


def test_file_command_is_the_same_workload_through_the_kernel() -> None:
    w = fio.WORKLOADS[2]  # 4 KiB randwrite QD16
    nbd = fio.fio_command("nbd://x/", w, 2, 0.5, size=1 << 20, name="local")
    f = fio.file_command("/d/local.dat", w, 2, 0.5, size=1 << 20)
    assert "--ioengine=nbd" not in f and "--ioengine=libaio" in f and "--direct=1" in f
    assert "--filename=/d/local.dat" in f and not any(a.startswith("--uri") for a in f)
    common = [a for a in nbd if not a.startswith(("--ioengine", "--uri"))]
    assert [
        a for a in f if a not in ("--ioengine=libaio", "--direct=1", "--filename=/d/local.dat")
    ] == common


def test_cluster_pids_from_agent_json(tmp_path) -> None:
    me = os.getpid()
    for node, children in {
        "node-1": {"replica_server": {"pid": me}, "engines": {"data": {"pid": me}}},
        "node-2": {"replica_server": {"pid": 2**22 + 7}},  # gone: not counted
        "node-3": {"replica_server": {}, "engines": {"other": {"pid": 1}}},
    }.items():
        d = tmp_path / "nodes" / node
        d.mkdir(parents=True)
        (d / "agent.json").write_text(json.dumps({"children": children}))
    (tmp_path / "nodes" / "broken").mkdir()
    (tmp_path / "nodes" / "broken" / "agent.json").write_text("{not json")
    assert bench_systems.cluster_pids(str(tmp_path), "data") == [me]  # once
    # no engine of that volume recorded here: the CPU cannot be measured, say nothing
    assert bench_systems.cluster_pids(str(tmp_path), "absent") == []
    assert bench_systems.cluster_pids(str(tmp_path / "nowhere"), "data") == []


@pytest.mark.parametrize(
    "args, says",
    [
        ([], "or --local-engine"),
        (["data", "--local-engine"], "or --local-engine"),
        (["--local-engine", "--workloads", "randwrite-9k"], "unknown randwrite-9k"),
    ],
)
def test_bench_refuses_unclear_requests_before_starting_anything(args, says) -> None:
    r = CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and says in r.stderr, r.output
