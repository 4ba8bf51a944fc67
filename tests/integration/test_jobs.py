"""Recurring snapshot jobs through the `cargohold` CLI against a local cluster of real
processes (a manager, three agents, their replica servers and engines; mutual TLS): a job
with keep_last=2 selecting one attached volume by name and one detached volume by the label a
StorageClass's ``recurringJobs`` puts on it, run three times with ``job run-now`` (its cron is
yearly, so only run-now runs it); after the third run two snapshots of each volume remain,
the newest two, ready, labelled with the job; deleting the job keeps them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.nbd_clients import qemu_io
from tests.support.polling import wait_until

JOB_LABEL = "cargohold.io/job"


@pytest.fixture
def cluster() -> Iterator[Path]:
    d = Path(f"/tmp/chl-jobs-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3).up(timeout=90)
    try:
        yield d
    finally:
        c.down(purge=True)


def _runs(d: Path) -> dict[str, Any]:
    job: Any = js(d, "job", "get", "snap")
    return {r["volume"]: r for r in job["runs"]}


def _snaps(d: Path, volume: str) -> list[dict[str, Any]]:
    return js(d, "snapshot", "list", volume)  # type: ignore[return-value]


def test_a_keep_last_2_snapshot_job_run_three_times_leaves_two(cluster: Path) -> None:
    d = cluster
    # a label naming a job that does not exist is refused (what CreateVolume meets)
    bad = cli(
        d,
        "volume", "create", "tagged", "--size", "32MiB",
        "--label", "recurring-job.cargohold.io/snap=enabled",
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "no recurring job 'snap'" in bad.stderr, bad.stderr
    cli(
        d,
        "job", "create", "snap", "--kind", "snapshot", "--cron", "0 0 1 1 *",
        "--volume", "data", "--keep-last", "2", "--max-jitter", "0", "--deadline", "5m",
    )  # fmt: skip
    cli(d, "volume", "create", "data", "--size", "32MiB", "--replicas", "2")
    cli(
        d,
        "volume", "create", "tagged", "--size", "32MiB", "--replicas", "2",
        "--label", "recurring-job.cargohold.io/snap=enabled",
    )  # fmt: skip
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x5a 0 1M")

    made: dict[str, list[str]] = {"data": [], "tagged": []}
    for i in range(1, 4):
        cli(d, "job", "run-now", "snap")

        def ran(i: int = i) -> bool:
            runs = _runs(d)
            return set(runs) == {"data", "tagged"} and all(
                r["runs"] == i and r["last_result"] in ("succeeded", "failed")
                for r in runs.values()
            )

        wait_until(ran, 120, f"run {i} of job snap on both volumes", 0.5)
        for vol, r in _runs(d).items():
            assert r["last_result"] == "succeeded", r
            made[vol].append(r["history"][-1]["object"])

    for vol in ("data", "tagged"):

        def two_left(vol: str = vol) -> bool:
            snaps = _snaps(d, vol)
            return len(snaps) == 2 and all(s["state"] == "ready" for s in snaps)

        wait_until(two_left, 120, f"two snapshots of {vol}", 0.5)
        snaps = _snaps(d, vol)
        assert sorted(s["name"] for s in snaps) == sorted(made[vol][1:])  # the newest two
        assert all(s["labels"] == {JOB_LABEL: "snap"} for s in snaps)
        hist = _runs(d)[vol]["history"]
        assert [h["result"] for h in hist] == ["succeeded"] * 3
        assert hist[-1]["deleted"] == [made[vol][0]]

    listed: Any = js(d, "job", "list")
    assert [(j["name"], j["kind"], j["retention"]["keep_last"]) for j in listed] == [
        ("snap", "snapshot", 2)
    ]
    cli(d, "job", "delete", "snap")
    assert cli(d, "job", "get", "snap", check=False).returncode == 4
    assert len(_snaps(d, "data")) == 2 and len(_snaps(d, "tagged")) == 2  # kept
