"""fio's JSON report into one row of figures (cargohold.cli.fio), and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from cargohold.cli import fio


def report(rw: str = "randwrite", error: int = 0) -> dict:
    def side(iops: float, bw: int, mean: float, pct: dict[str, int]) -> dict:
        lat = {"min": 1, "max": 9, "mean": mean, "stddev": 1.0, "N": 100}
        if pct:
            lat["percentile"] = pct
        return {"iops": iops, "bw_bytes": bw, "total_ios": 1000, "lat_ns": lat}

    busy = side(
        5000.5,
        20_482_048,
        200_500.0,
        {"50.000000": 190_464, "99.000000": 501_760, "99.900000": 1_003_520},
    )
    idle = side(0.0, 0, 0.0, {})
    job = {
        "jobname": "cargohold",
        "error": error,
        "read": busy if "read" in rw else idle,
        "write": busy if "write" in rw else idle,
        "usr_cpu": 1.0,
        "sys_cpu": 2.0,
    }
    return {"fio version": "fio-3.33", "jobs": [job]}


@pytest.mark.parametrize("rw", ["randwrite", "write", "randread", "read"])
def test_figures_take_the_side_of_the_workload(rw: str) -> None:
    row = fio.figures(json.dumps(report(rw)), rw)
    assert row == {
        "ops_per_s": 5000.5,
        "mb_per_s": pytest.approx(20.482048),
        "lat_mean_us": pytest.approx(200.5),
        "ios": 1000,
        "lat_p50_us": pytest.approx(190.464),
        "lat_p99_us": pytest.approx(501.76),
        "lat_p999_us": pytest.approx(1003.52),
    }


def test_a_line_before_the_json_is_skipped() -> None:
    # fio's nbd engine prints a line of its own before the report
    out = "nbd: connected to nbd://127.0.0.1:1234/x\n" + json.dumps(report())
    assert fio.figures(out, "randwrite")["ops_per_s"] == 5000.5


def test_missing_percentiles_read_as_zero() -> None:
    r = report()
    del r["jobs"][0]["write"]["lat_ns"]["percentile"]
    row = fio.figures(json.dumps(r), "randwrite")
    assert row["lat_p99_us"] == 0 and row["lat_mean_us"] == pytest.approx(200.5)


@pytest.mark.parametrize(
    "out", ["", "fio: engine nbd not loadable", "{not json", json.dumps({"jobs": []})]
)
def test_no_report_is_an_error(out: str) -> None:
    with pytest.raises(fio.FioError):
        fio.figures(out, "randread")


def test_a_job_error_is_an_error() -> None:
    with pytest.raises(fio.FioError, match="error 5"):
        fio.figures(json.dumps(report(error=5)), "randwrite")


def test_command_line() -> None:
    w = next(w for w in fio.WORKLOADS if w.key == "randwrite-4k-qd16")
    cmd = fio.fio_command("nbd://127.0.0.1:9/v", w, 20, 2, size=1 << 30)
    assert cmd[0] == "fio"
    for arg in (
        "--ioengine=nbd",
        "--uri=nbd://127.0.0.1:9/v",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--time_based",
        "--runtime=20000ms",
        "--ramp_time=2000ms",
        f"--size={1 << 30}",
        "--output-format=json",
        "--percentile_list=50:99:99.9",
    ):
        assert arg in cmd
    quick = fio.fio_command("nbd://h/v", w, 0.5, 0)
    assert "--runtime=500ms" in quick and not any(a.startswith("--ramp_time") for a in quick)
    assert not any(a.startswith("--size") for a in quick)


def test_the_standard_profile_is_issue_6s() -> None:
    keys = {(w.rw, w.bs, w.qd) for w in fio.WORKLOADS}
    assert keys == {
        ("randwrite", "4k", 1),
        ("randwrite", "4k", 16),
        ("randread", "4k", 1),
        ("randread", "4k", 16),
        ("write", "1M", 4),
        ("read", "1M", 4),
    }
    assert fio.PROFILES["standard"].seconds == 20 and fio.PROFILES["quick"].seconds == 2


@pytest.mark.skipif(shutil.which("fio") is None, reason="needs fio")
def test_a_real_fio_report_parses() -> None:
    # the null engine: fio's real JSON layout, no I/O
    p = subprocess.run(
        [
            "fio",
            "--name=t",
            "--ioengine=null",
            "--rw=randread",
            "--bs=4k",
            "--size=4m",
            "--time_based",
            "--runtime=200ms",
            "--output-format=json",
            "--lat_percentiles=1",
            "--percentile_list=50:99:99.9",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    row = fio.figures(p.stdout, "randread")
    assert row["ops_per_s"] > 0 and row["ios"] > 0
    assert row["lat_p50_us"] <= row["lat_p99_us"] <= row["lat_p999_us"]
