"""`cargohold bench` against real processes: a throwaway local engine with three replica
servers (TLS) beside the local file and nbdkit, and a volume of a real local cluster
(manager, three agents, their replica servers and engines); both ``long``. The quick profile prints every workload with non-zero IOPS, and ``--json`` is the method's
figures as JSON. The volume is attached for the run and detached after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.cli.fio import WORKLOADS
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli

pytestmark = [pytest.mark.skipif(shutil.which("fio") is None, reason="needs fio")]


def _ours(mark: str) -> list[str]:
    """Command lines of live processes that mention ``mark`` (the run's directory)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if mark in cmd:
                found.append(cmd)
    return found


@pytest.mark.long  # ~15 s on a quiet machine, over a minute on a busy one
def test_bench_local_engine_json_smoke(tmp_path: Path) -> None:
    """One short run of every system: the figures, the verdict and the ratios are there, the
    CPU per write is measured, and every process and file of the run is gone after."""
    cmd = [sys.executable, "-m", "cargohold", "bench", "--local-engine", "--replicas", "3"]
    cmd += ["--profile", "quick", "--seconds", "1", "--repeats", "1", "--size", "64MiB"]
    cmd += ["--workloads", "randwrite-4k-qd16", "--work-dir", str(tmp_path), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    report = json.loads(p.stdout)
    assert p.returncode == (9 if report["valid"] is False else 0), p.stderr  # 9: INVALID
    assert report["label"] == "local engine, 3 replicas (TLS)" and report["replicas"] == 3
    assert report["repeats"] == 1 and report["region_bytes"] == 64 << 20
    w = report["summary"]["randwrite-4k-qd16"]
    tgt = w["systems"]["target"]
    assert tgt["ops_per_s"] > 0 and 0 < tgt["lat_p50_us"] <= tgt["lat_p99_us"]
    assert 1 < tgt["cpu_us_per_op"] < 1e5  # four processes' CPU per write, measured
    assert w["systems"]["local"]["ops_per_s"] > 0
    assert w["ratios"]["vs_local"] == tgt["ops_per_s"] / w["systems"]["local"]["ops_per_s"]
    assert w["ratios"]["vs_ceph"] == tgt["ops_per_s"] / 1380.0
    if shutil.which("nbdkit"):
        assert w["ratios"]["vs_nbdkit"] > 0 and w["systems"]["nbdkit"]["cpu_us_per_op"] > 0
    assert w["verdict"]["valid"] in (True, False) and report["valid"] == w["verdict"]["valid"]
    assert [r["workload"] for r in report["results"]] == ["randwrite-4k-qd16"]
    assert os.listdir(tmp_path) == [] and _ours(str(tmp_path)) == []


def _children(pid: int) -> list[str]:
    """Command lines of ``pid``'s live children."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                out.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return out


@pytest.mark.long
def test_bench_stopped_midway_stops_everything_it_started(tmp_path: Path) -> None:
    """SIGTERM in the middle of a run (the engine up, fio running): the command stops every
    process it started, by PID, and removes its directory."""
    cmd = [sys.executable, "-m", "cargohold", "bench", "--local-engine", "--profile", "quick"]
    cmd += ["--seconds", "30", "--repeats", "1", "--size", "64MiB", "--no-baselines"]
    cmd += ["--workloads", "randwrite-4k-qd16", "--work-dir", str(tmp_path), "--json"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not any("--rw=randwrite" in c for c in _children(p.pid)):  # the measured run
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "fio never started"
            time.sleep(0.2)
        live = _ours(str(tmp_path))
        assert sum("replica-server" in c for c in live) == 3, live
        assert sum("engine --volume" in c for c in live) == 1, live
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0 and out == ""
    assert _ours(str(tmp_path)) == [] and os.listdir(tmp_path) == []


@pytest.fixture
def cluster() -> Iterator[Path]:
    d = Path(f"/tmp/chbench-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3).up(timeout=90)
    try:
        yield d
    finally:
        c.down(purge=True)


@pytest.mark.long
def test_bench_quick_profile_table_and_json(cluster: Path) -> None:
    cli(cluster, "volume", "create", "bench", "--size", "256MiB", "--replicas", "3")

    # without --yes and without a terminal it refuses: the benchmark overwrites data
    p = subprocess.run(
        [sys.executable, "-m", "cargohold", "bench", "bench", "--dir", str(cluster)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 2 and "--yes" in p.stderr

    args = ["bench", "bench", "--profile", "quick", "--repeats", "1", "--yes"]
    out = cli(cluster, *args, "--no-baselines", timeout=300).stdout
    for w in WORKLOADS:
        line = next((ln for ln in out.splitlines() if w.title in ln), None)
        assert line is not None, f"no row for {w.title}:\n{out}"
        assert float(line.split(w.title, 1)[1].split()[0].replace(",", "")) > 0, line  # IOPS
    assert "baselines: not measured" in out and "detached again" in out
    vol = json.loads(cli(cluster, "volume", "get", "bench", "-o", "json").stdout)
    assert vol["state"] == "detached"

    p = cli(cluster, *args, "--seconds", "1", "-o", "json", check=False, timeout=300)
    report = json.loads(p.stdout)
    assert p.returncode == (9 if report["valid"] is False else 0), p.stderr  # 9: INVALID
    assert report["profile"] == "quick" and report["seconds"] == 1
    assert report["region_bytes"] == 256 << 20 and report["attached_for_the_run"]
    assert [r["workload"] for r in report["results"]] == [w.key for w in WORKLOADS]
    for r in report["results"]:
        assert r["ops_per_s"] > 0 and r["mb_per_s"] > 0 and r["ios"] > 0
        assert 0 < r["lat_p50_us"] <= r["lat_p99_us"] <= r["lat_p999_us"]
        # the cluster is local: its engine's and replica servers' CPU (agent.json's PIDs)
        assert r["cpu_us_per_op"] > 0
        w = report["summary"][r["workload"]]
        assert w["systems"]["local"]["ops_per_s"] > 0 and w["ratios"]["vs_local"] > 0
        assert w["verdict"]["valid"] in (True, False)
