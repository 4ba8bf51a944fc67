"""`cargohold bench` against a volume of a real local cluster (manager, three agents, their
replica servers and engines): the quick profile prints every workload with non-zero IOPS,
and ``-o json`` is fio's figures as JSON. The volume is attached for the run and detached
after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.cli.fio import WORKLOADS
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli

pytestmark = [
    pytest.mark.skipif(shutil.which("fio") is None, reason="needs fio"),
    pytest.mark.long,
]


@pytest.fixture
def cluster() -> Iterator[Path]:
    d = Path(f"/tmp/chbench-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3).up(timeout=90)
    try:
        yield d
    finally:
        c.down(purge=True)


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

    out = cli(cluster, "bench", "bench", "--profile", "quick", "--yes").stdout
    for w in WORKLOADS:
        line = next((ln for ln in out.splitlines() if w.title in ln), None)
        assert line is not None, f"no row for {w.title}:\n{out}"
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        assert cells[0] == w.title
        assert float(cells[1].replace(",", "")) > 0, line  # IOPS
    assert "detached again" in out
    vol = json.loads(cli(cluster, "volume", "get", "bench", "-o", "json").stdout)
    assert vol["state"] == "detached"

    report = json.loads(
        cli(
            cluster, "bench", "bench", "--profile", "quick", "--seconds", "1", "-y", "-o", "json"
        ).stdout
    )
    assert report["profile"] == "quick" and report["seconds"] == 1
    assert [r["workload"] for r in report["results"]] == [w.key for w in WORKLOADS]
    for r in report["results"]:
        assert r["ops_per_s"] > 0 and r["mb_per_s"] > 0 and r["ios"] > 0
        assert 0 < r["lat_p50_us"] <= r["lat_p99_us"] <= r["lat_p999_us"]
