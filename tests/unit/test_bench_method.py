"""The benchmarks' measuring method (cargohold/cli/bench_method.py, re-exported by
benchmarks/method.py): the CPU accounting parser, the
medians and spread of repeated runs, and the baseline band check that marks a run INVALID
(issue #22 Part 1)."""

from __future__ import annotations

import os
import sys

import pytest

from cargohold.cli import bench_method as method

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import method as benchmarks_method

# a real line's shape: the command name holds a space and a ')' (fields after the last ')')
STAT = (
    "4242 (python3 x) y) S 4200 4242 4200 0 -1 4194304 1523 0 0 0 "
    "250 75 3 4 20 0 3 0 12345 100000 2000 18446744073709551615"
)


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    assert method.parse_stat(STAT) == (4242, 4200, 325)


def test_parse_stat_of_this_process_is_consistent_with_os_times() -> None:
    with open(f"/proc/{os.getpid()}/stat") as f:
        pid, ppid, ticks = method.parse_stat(f.read())
    assert (pid, ppid) == (os.getpid(), os.getppid())
    t = os.times()
    assert abs(ticks / method.CLK_TCK - (t.user + t.system)) < 0.05


@pytest.mark.parametrize("bad", ["", "garbage", "12 (x) S 1 2"])
def test_parse_stat_refuses_what_is_not_a_stat_line(bad: str) -> None:
    with pytest.raises(ValueError):
        method.parse_stat(bad)


def test_tree_ticks_adds_descendants_once_and_ignores_others() -> None:
    stats = {10: (1, 100), 11: (10, 20), 12: (11, 5), 13: (1, 999)}
    assert method.tree_ticks(stats, [10]) == 125
    assert method.tree_ticks(stats, [11, 12]) == 25  # 12 is 11's child: counted once
    assert method.tree_ticks(stats, [77]) == 0  # gone


def test_cpu_us_per_op_sums_processes_and_divides_by_ops() -> None:
    hz = method.CLK_TCK
    before = {1: 0, 2: hz}
    after = {1: hz, 2: 3 * hz}  # 1 s + 2 s of CPU
    assert method.cpu_us_per_op(before, after, 1000) == pytest.approx(3000.0)
    assert method.cpu_us_per_op(before, after, 0) == 0.0
    assert method.cpu_us_per_op({1: 5}, {}, 10) == 0.0  # a process that vanished adds nothing


def test_cpu_ticks_of_this_process_grow_with_work() -> None:
    a = method.cpu_ticks([os.getpid()])
    x = 0
    while method.cpu_ticks([os.getpid()])[os.getpid()] - a[os.getpid()] < 2:
        x += sum(range(10_000))
    assert x > 0


def test_spread() -> None:
    s = method.spread([100.0, 120.0, 90.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (100.0, 90.0, 120.0, 3)
    assert s["spread"] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        method.spread([])


def test_band_check_in_band() -> None:
    v = method.band_check({"local": [50e3, 53e3, 55e3], "nbdkit": [47e3, 45e3, 48e3]})
    assert v.valid and v.reasons == []


def test_band_check_flags_a_baseline_run_out_of_band() -> None:
    v = method.band_check({"local": [50e3, 53e3, 55e3], "nbdkit": [112e3, 120e3, 21.9e3]})
    assert not v.valid
    assert len(v.reasons) == 1 and v.reasons[0].startswith("nbdkit: a run at 21,900")


def test_band_check_flags_a_stalled_nbdkit_against_the_local_file() -> None:
    # each steady, but nbdkit at 0.41x the local file in the same run: stalled
    v = method.band_check({"local": [53e3, 53e3, 54e3], "nbdkit": [21.9e3, 22e3, 22.1e3]})
    assert not v.valid and "stalled" in v.reasons[0]


def test_band_check_without_baselines_is_valid_and_other_systems_do_not_count() -> None:
    assert method.band_check({"engine-3": [1.0, 100.0]}).valid
    assert method.band_check({"nbdkit": [100.0]}).valid


def test_parse_meminfo() -> None:
    text = "MemTotal:       16314404 kB\nDirty:              1234 kB\nWriteback:  0 kB\nHuge: x\n"
    m = method.parse_meminfo(text)
    assert m == {"MemTotal": 16314404, "Dirty": 1234, "Writeback": 0}


def _run(ops: float, p99: float = 100.0) -> dict:
    return {
        "ops_per_s": ops,
        "lat_p99_us": p99,
        "load1": 1.0,
        "server_cpu_pct_by_process": {"nbdkit": ops / 1000},
        "label": "x",
    }


def test_the_engine_benchmark_takes_medians_and_judges_each_workload() -> None:
    import engine  # benchmarks/engine.py

    med = engine.median_run([_run(100.0, 300.0), _run(300.0, 100.0), _run(200.0, 200.0)])
    assert med["ops_per_s"] == 200.0 and med["lat_p99_us"] == 200.0
    assert med["server_cpu_pct_by_process"] == {"nbdkit": 0.2}
    assert med["ops_spread"]["spread"] == pytest.approx(1.0)
    assert [r["ops_per_s"] for r in med["runs"]] == [100.0, 300.0, 200.0]
    assert "label" not in med
    verdict = engine.judge(
        {
            "randwrite-4k-qd16": {
                "local": [_run(69.9e3), _run(70e3), _run(71e3)],
                "nbdkit": [_run(21.9e3), _run(22e3), _run(22.5e3)],  # the recorded stall
                "engine-3": [_run(1e3), _run(9e3), _run(5e3)],  # not a baseline: not judged
            },
            "randread-4k-qd16": {"local": [_run(90e3)] * 3, "nbdkit": [_run(149e3)] * 3},
        }
    )
    assert verdict["randread-4k-qd16"] == {"valid": True, "reasons": []}
    assert not verdict["randwrite-4k-qd16"]["valid"]
    assert "stalled" in verdict["randwrite-4k-qd16"]["reasons"][0]
    results = {"engine-3": {"ops_per_s": 2760.0}, "nbdkit": {"ops_per_s": 0.0}}
    engine.vs_ceph("randwrite-4k-qd16", results)
    assert results["engine-3"]["ops_vs_ceph"] == pytest.approx(2.0)
    other = {"engine-3": {"ops_per_s": 2760.0}}
    engine.vs_ceph("seqwrite-1m-qd4", other)
    assert "ops_vs_ceph" not in other["engine-3"]


def test_benchmarks_use_the_packages_method():
    """One place for each fact: benchmarks/method.py re-exports the package's functions."""
    for name in benchmarks_method.__all__:
        assert getattr(benchmarks_method, name) is getattr(method, name), name


def test_save_json_makes_the_directory_and_round_trips(tmp_path):
    import json

    path = tmp_path / "results" / "run.json"
    method.save_json(str(path), {"results": {"w": {"engine-1": {"iops": 1.5}}}})
    assert json.loads(path.read_text()) == {"results": {"w": {"engine-1": {"iops": 1.5}}}}
