#!/usr/bin/env python3
"""Benchmark: what one pass of the recurring-job runner costs the leading manager
(control/job_runner.py), with J jobs over V volumes each on the SQLite state store.

Actions are in-memory (snapshots "made" at once): this measures the runner's own work —
reading jobs and run states, evaluating each (job, volume)'s cron schedule and jitter,
writing run states — not the engines'. Three passes are timed:

    idle     nothing due (a pass every reconcile_interval costs this)
    start    every (job, volume) due: a run started for each (caps high)
    finish   every run followed to its end and retention applied (keep_last 2)

    .venv/bin/python benchmarks/jobs_runner.py [--jobs 10] [--volumes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cargohold.control.job_actions import VolumeFacts
from cargohold.control.job_runner import JobRunner
from cargohold.control.jobs import JobSelector, JobStore, RecurringJob, Retention
from cargohold.control.state import open_store

T0 = 1_772_409_600.0


class Actions:
    def __init__(self, volumes: int) -> None:
        self.vols = [VolumeFacts(f"v{i}", node=f"n{i % 10}") for i in range(volumes)]
        self.snaps: dict[str, list[dict[str, Any]]] = {}
        self.n = 0

    async def volumes(self) -> list[VolumeFacts]:
        return self.vols

    async def create_snapshot(self, volume: str, name: str, labels: dict[str, str]) -> Any:
        self.n += 1
        self.snaps.setdefault(volume, []).append(
            {"name": name, "state": "ready", "created_at": T0 + self.n, "labels": labels}
        )
        return {"id": f"op-{self.n}"}

    async def operation(self, oid: str) -> Any:
        return {"id": oid, "state": "succeeded"}

    async def snapshots(self, volume: str) -> list[dict[str, Any]]:
        return self.snaps.get(volume, [])

    async def delete_snapshot(self, volume: str, name: str) -> None:
        self.snaps[volume] = [s for s in self.snaps[volume] if s["name"] != name]

    async def create_backup(self, *a: Any) -> Any:
        raise NotImplementedError

    async def delete_backup(self, *a: Any) -> None:
        raise NotImplementedError

    async def backups(self, *a: Any) -> list[dict[str, Any]]:
        return []


async def main(jobs: int, volumes: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = JobStore(open_store(f"sqlite:{d}/state.db", create=True))
        acts = Actions(volumes)
        now = [T0 + 30]
        runner = JobRunner(store, acts, lambda: now[0])  # type: ignore[arg-type]
        names = [v.name for v in acts.vols]
        for j in range(jobs):
            await store.create(
                RecurringJob(
                    name=f"job-{j}",
                    kind="snapshot",
                    cron="0 * * * *",
                    retention=Retention(keep_last=2),
                    selector=JobSelector(volumes=names),
                    max_per_node=10**3,
                    max_jitter=0,
                    created_at=T0 - 3600 * 3 - 10,
                )
            )
        pairs = jobs * volumes
        out = {}
        for label, at in (("start", T0 + 30), ("finish", T0 + 40), ("idle", T0 + 50)):
            now[0] = at
            t = time.perf_counter()
            await runner.run_once()
            out[label] = time.perf_counter() - t
        print(f"{jobs} jobs x {volumes} volumes = {pairs} (job, volume) pairs, SQLite store")
        for label, s in out.items():
            print(f"  {label:7s} pass {s * 1000:8.1f} ms  ({s / pairs * 1e6:6.1f} us per pair)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--volumes", type=int, default=500)
    a = ap.parse_args()
    asyncio.run(main(a.jobs, a.volumes))
