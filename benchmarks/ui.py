#!/usr/bin/env python3
"""Benchmark: the web console's page loads with 2,000 volumes in the state store (issue 20).

A new SQLite state store is filled through the manager's own ``Service`` (three nodes
registered, N volumes of three replicas created as the API would, ``create_volume``; no
agents or engines: the records are what the pages read), then a real manager process
(``cargohold manager --plaintext``) is started on it and every page is loaded over HTTP
``--loads`` times (default 50) one after another, each timed from the request until the
whole body has arrived. Reported per page: p50, p95, max (ms), the manager's CPU time per
load (utime + stime from /proc/PID/stat: what a page costs, whatever else the machine
runs) and the body's size.

    .venv/bin/python benchmarks/ui.py [--volumes 2000] [--loads 50] \\
        [--json benchmarks/results/ui.json] [--reuse /tmp/ui-2000.db]

Issue 20's target: p95 < 300 ms for every page with 2,000 volumes. The nodes send no
heartbeats, so the manager marks them down after a while: the overview then lists them
(and every volume is "unknown"): more for it to show, not less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.method import cpu_ticks, cpu_us_per_op  # noqa: E402
from cargohold.control.manager import Manager  # noqa: E402
from cargohold.control.model import DiskReport, Registration  # noqa: E402
from cargohold.control.requests import VolumeCreate  # noqa: E402
from cargohold.control.settings import ManagerSettings  # noqa: E402

GiB = 1 << 30


async def fill(state: str, volumes: int) -> float:
    """The store: a cluster, three nodes of 100 TiB, ``volumes`` volumes. -> seconds."""
    t0 = time.perf_counter()
    mgr = Manager(state, "bench-fill", ManagerSettings(), init=True)
    await mgr.open_cluster()
    s = mgr.service
    for i in (1, 2, 3):
        await s.register(
            f"node-{i}",
            Registration(
                address=f"127.0.0.{i}",
                replica_port=9500,
                zone=f"zone-{i}",
                disks=[DiskReport(name="disk-0", path=f"/d{i}", capacity_bytes=100 << 40)],
            ),
        )
    for n in range(volumes):
        labels = {"app": ("db", "queue", "cache", "web")[n % 4]}
        await s.create_volume(
            VolumeCreate(name=f"pvc-{n:05d}", size_bytes=(1 + n % 50) * GiB, labels=labels)
        )
    await mgr.store.close()
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


PAGES = {
    "overview": "/ui/",
    "volumes (page 1)": "/ui/volumes",
    "volumes sorted by size, page 40": "/ui/volumes?sort=size&order=desc&page=40",
    "volumes filtered (app=db)": "/ui/volumes?q=app%3Ddb&robustness=unknown",
    "volume detail": "/ui/volumes/pvc-00123",
    "volume live fragment": "/ui/live/volumes/pvc-00123",
    "nodes": "/ui/nodes",
    "events": "/ui/events",
}


def settle(pid: int, limit: float = 0.05, window: float = 2.0, timeout: float = 180) -> None:
    """Wait until the manager is idle (under ``limit`` of a core over ``window`` s): just
    started, its reconcilers make a pass over every volume, which is not a page's cost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_ticks([pid])
        time.sleep(window)
        busy = cpu_us_per_op(before, cpu_ticks([pid]), 1) / 1e6 / window
        if busy < limit:
            print(f"the manager is idle ({busy:.1%} of a core)", flush=True)
            return
    print("the manager did not settle: measuring anyway", flush=True)


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def run(volumes: int, loads: int, reuse: Path | None = None) -> dict[str, object]:
    d = Path(tempfile.mkdtemp(prefix="cargohold-ui-bench-"))
    state = f"sqlite:{d}/state.db"
    filled = 0.0
    if reuse is not None and reuse.exists():
        shutil.copy(reuse, d / "state.db")  # a store an earlier run filled (--reuse)
        print(f"reusing {reuse}", flush=True)
    else:
        filled = asyncio.run(fill(state, volumes))
        print(f"filled {volumes} volumes in {filled:.1f} s", flush=True)
        if reuse is not None:
            shutil.copy(d / "state.db", reuse)
    port = free_port()
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/cargohold"),
            "manager",
            "--state",
            state,
            "--plaintext",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=open(d / "manager.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results: dict[str, dict[str, float]] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the manager did not start: see {d}/manager.log")
                time.sleep(0.1)
            settle(proc.pid)
            for name, path in PAGES.items():
                c.get(path).raise_for_status()  # warm: the manager's record cache
                times = []
                size = 0
                before = cpu_ticks([proc.pid])
                for _ in range(loads):
                    t0 = time.perf_counter()
                    r = c.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    size = len(r.content)
                cpu_ms = cpu_us_per_op(before, cpu_ticks([proc.pid]), loads) / 1000
                results[name] = {
                    "cpu_ms": round(cpu_ms, 1),
                    "p50_ms": round(median(times), 1),
                    "p95_ms": round(percentile(times, 95), 1),
                    "max_ms": round(max(times), 1),
                    "bytes": size,
                }
                print(
                    f"{name:34s} p50 {results[name]['p50_ms']:7.1f} ms  p95 "
                    f"{results[name]['p95_ms']:7.1f} ms  max {results[name]['max_ms']:7.1f} ms"
                    f"  cpu {cpu_ms:6.1f} ms  {size / 1024:6.1f} KiB",
                    flush=True,
                )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    shutil.rmtree(d)  # kept when the run failed: its manager.log says why
    return {
        "volumes": volumes,
        "loads": loads,
        "fill_seconds": round(filled, 1),
        "pages": results,
        "host": platform.node(),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", type=int, default=2000)
    ap.add_argument("--loads", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="keep the filled SQLite file here, and start from it when it exists (the fill "
        "takes minutes)",
    )
    a = ap.parse_args()
    out = run(a.volumes, a.loads, a.reuse)
    worst = max(p["p95_ms"] for p in out["pages"].values())  # type: ignore[attr-defined]
    print(f"worst p95: {worst} ms (target < 300 ms)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
