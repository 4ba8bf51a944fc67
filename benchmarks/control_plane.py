#!/usr/bin/env python3
"""Benchmark: the control plane of a local cluster (manager on SQLite, three node agents).

Provisioning: N volumes (default 100) go through create, attach, detach and delete, one
operation at a time, each timed from the API call until it has taken effect, polling the
manager every 20 ms:

    create  until the volume is no longer ``creating`` and every replica is on disk
    attach  until ``attached`` with an NBD endpoint (the engine runs on the node)
    detach  until detached and its engine stopped
    delete  until GET answers 404

All N are created, then all attached, then (idle cost) left attached and untouched for
``--idle-seconds`` (default 60) while the CPU time of every cluster process is counted:
utime + stime from /proc/PID/stat of the manager and everything in the node agents' process
groups (agents, replica servers, engines). The RSS of each engine (a process of an agent's
group whose command line contains `` engine ``) comes from /proc/PID/status (VmRSS). Then
all are detached and deleted. Reported: p50/p99/mean/max per operation, total CPU in % of
one core, RSS per engine.

    .venv/bin/python benchmarks/control_plane.py [--volumes 100] [--idle-seconds 60] \\
        [--replicas 3] [--size 64MiB] [--json benchmarks/results/control_plane.json] \\
        [--profile DIR]

``--profile DIR``: after the idle window (so the measurement is not disturbed), py-spy
samples the manager, one agent and one engine of the still idle cluster for
``--profile-seconds`` (20) and writes their collapsed stacks (``DIR/<kind>.txt``, one line
per stack with its sample count: ``sort -t' ' -k2 -n``) and flame graphs (``DIR/<kind>.svg``).

Issue 6's targets: create p50 < 1 s; 100 idle attached volumes < 5% of one core in total,
< 40 MiB RSS per engine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.method import save_json  # noqa: E402
from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.control.client import ManagerClient  # noqa: E402
from cargohold.errors import NotFound  # noqa: E402
from cargohold.launcher.cluster import LocalCluster  # noqa: E402
from cargohold.launcher.processes import group_members  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "control_plane.json")
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPS = ("create", "attach", "detach", "delete")


# --- /proc ----------------------------------------------------------------------------------
def cpu_of(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_of(pid: int) -> int:
    """VmRSS in bytes; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kind_of(pid: int) -> str:
    cmd = cmdline(pid)
    for k in ("engine", "agent", "manager", "replica-server"):
        if f" {k} " in cmd or cmd.endswith(f" {k}"):
            return k
    return "other"


def cluster_pids(c: LocalCluster) -> dict[int, str]:
    """Every live process of the cluster: its managers' and agents' process groups."""
    c.reload()
    out: dict[int, str] = {}
    for p in [*c.managers, *c.nodes.values()]:
        if p.pgid is not None:
            for pid in group_members(p.pgid):
                out[pid] = kind_of(pid)
    return out


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": pct(values, 50),
        "p99_s": pct(values, 99),
        "mean_s": statistics.fmean(values) if values else 0.0,
        "max_s": max(values, default=0.0),
    }


# --- the operations ---------------------------------------------------------------------------
def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def provision(
    c: ManagerClient, names: list[str], size: int, replicas: int, nodes: list[str], timeout: float
) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {op: [] for op in OPS}
    for name in names:
        lat["create"].append(
            timed(
                lambda n=name: (
                    c.create_volume(n, size, replicas=replicas),
                    c.wait_placed(n, timeout),
                )
            )
        )
    print(f"created {len(names)}: p50 {pct(lat['create'], 50):.3f} s", flush=True)
    for i, name in enumerate(names):
        node = nodes[i % len(nodes)]
        lat["attach"].append(
            timed(
                lambda n=name, node=node: (
                    c.attach(n, node),
                    c.wait_attached(n, node, timeout),
                )
            )
        )
    print(f"attached {len(names)}: p50 {pct(lat['attach'], 50):.3f} s", flush=True)
    return lat


def teardown(
    c: ManagerClient, names: list[str], timeout: float, lat: dict[str, list[float]]
) -> None:
    for name in names:
        lat["detach"].append(timed(lambda n=name: (c.detach(n), c.wait_detached(n, timeout))))
    print(f"detached {len(names)}: p50 {pct(lat['detach'], 50):.3f} s", flush=True)
    for name in names:
        lat["delete"].append(timed(lambda n=name: (c.delete_volume(n), c.wait_gone(n, timeout))))
    print(f"deleted {len(names)}: p50 {pct(lat['delete'], 50):.3f} s", flush=True)


def idle_cost(cl: LocalCluster, seconds: float, settle: float) -> dict[str, Any]:
    time.sleep(settle)
    before = cluster_pids(cl)
    cpu0 = {pid: cpu_of(pid) for pid in before}
    t0 = time.perf_counter()
    time.sleep(seconds)
    after = cluster_pids(cl)
    wall = time.perf_counter() - t0
    by_kind: dict[str, float] = {}
    for pid, kind in after.items():
        if pid in cpu0:  # processes that lived through the whole window
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu_of(pid) - cpu0[pid]
    born = sorted(set(after) - set(before))
    rss: dict[str, list[int]] = {}
    for pid, kind in after.items():
        rss.setdefault(kind, []).append(rss_of(pid))
    engines = rss.get("engine", [])
    return {
        "seconds": wall,
        "cpu_pct_of_one_core": 100 * sum(by_kind.values()) / wall,
        "cpu_pct_by_kind": {k: 100 * v / wall for k, v in sorted(by_kind.items())},
        "processes": {k: len(v) for k, v in sorted(rss.items())},
        "processes_started_during_window": len(born),
        "engine_rss_mib": {
            "n": len(engines),
            "mean": statistics.fmean(engines) / 2**20 if engines else 0.0,
            "p50": pct(engines, 50) / 2**20,
            "max": max(engines, default=0) / 2**20,
        },
        "rss_mib_total_by_kind": {k: sum(v) / 2**20 for k, v in sorted(rss.items())},
    }


def profile(cl: LocalCluster, where: str, seconds: float) -> dict[str, str]:
    """py-spy of the manager, one agent and one engine at once; -> kind: collapsed stacks."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print("--profile: py-spy not found (pip install -e '.[dev]')", flush=True)
        return {}
    os.makedirs(where, exist_ok=True)
    pids = cluster_pids(cl)
    picked: dict[str, int] = {}
    for pid, kind in sorted(pids.items()):
        if kind in ("manager", "agent", "engine") and kind not in picked:
            picked[kind] = pid
    procs = []
    for kind, pid in picked.items():
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
            out = os.path.join(where, f"{kind}.{ext}")
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
            cmd += ["--rate", "100", "--format", fmt, "--output", out, "--nonblocking"]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    for p in procs:
        p.wait()
    print(f"profiles of {', '.join(picked)} in {where}", flush=True)
    return {k: os.path.join(where, f"{k}.txt") for k in picked}


# --- report -----------------------------------------------------------------------------------
def print_report(out: dict[str, Any]) -> None:
    prov = out.get("provisioning")
    if prov:
        print(f"\nprovisioning, {out['volumes']} volumes, {out['replicas']} replicas each:")
        print(f"{'operation':10} {'p50 s':>8} {'p99 s':>8} {'mean s':>8} {'max s':>8}")
        for op in OPS:
            s = prov[op]
            print(
                f"{op:10} {s['p50_s']:8.3f} {s['p99_s']:8.3f} {s['mean_s']:8.3f} {s['max_s']:8.3f}"
            )
    idle = out.get("idle")
    if idle:
        e = idle["engine_rss_mib"]
        print(
            f"\nidle, {out['volumes']} attached volumes, {idle['seconds']:.0f} s: "
            f"CPU {idle['cpu_pct_of_one_core']:.1f}% of one core in total "
            f"({', '.join(f'{k} {v:.1f}%' for k, v in idle['cpu_pct_by_kind'].items())}); "
            f"engine RSS mean {e['mean']:.1f} MiB, max {e['max']:.1f} MiB ({e['n']} engines)"
        )
    for t in out.get("targets", []):
        print(f"  {t['what']:38} {t['got']:8.3f} (target {t['target']}): {t['verdict']}")


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if "provisioning" in out:
        got = out["provisioning"]["create"]["p50_s"]
        rows.append({"what": "create p50, s", "got": got, "target": "< 1 s", "met": got < 1})
    if "idle" in out:
        got = out["idle"]["cpu_pct_of_one_core"]
        what = f"idle CPU, {out['volumes']} volumes, % of a core"
        rows.append({"what": what, "got": got, "target": "< 5%", "met": got < 5})
        got = out["idle"]["engine_rss_mib"]["max"]
        rows.append({"what": "RSS per engine (max), MiB", "got": got, "target": "< 40 MiB"})
        rows[-1]["met"] = got < 40
    for r in rows:
        r["verdict"] = "met" if r["met"] else "MISSED"
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = parse_size(args.size)
    d = args.dir or f"/tmp/chcp-{os.getpid()}"
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_at_start": list(os.getloadavg()),
        "command": " ".join(sys.argv),
        "volumes": args.volumes,
        "replicas": args.replicas,
        "size": size,
        "nodes": args.nodes,
    }
    t_start = time.perf_counter()
    cl = LocalCluster.create(d, nodes=args.nodes).up(timeout=120)
    names = [f"cp-{i:03d}" for i in range(args.volumes)]
    try:
        with ManagerClient.discover(dir=d, poll_interval=0.02, timeout=30) as c:
            nodes = sorted(n["name"] for n in c.nodes())
            lat = provision(c, names, size, args.replicas, nodes, args.timeout)
            if args.idle_seconds > 0:
                print(f"idle: measuring {args.idle_seconds:g} s ...", flush=True)
                out["idle"] = idle_cost(cl, args.idle_seconds, args.settle)
            if getattr(args, "profile", None):  # the suite's arguments have none
                out["profiles"] = profile(cl, args.profile, args.profile_seconds)
            teardown(c, names, args.timeout, lat)
            out["provisioning"] = {op: summary(v) for op, v in lat.items()}
            out["provisioning_raw_s"] = lat
            left = []
            for n in names:
                try:
                    c.volume(n)
                    left.append(n)
                except NotFound:
                    pass
            out["volumes_left"] = left
    finally:
        cl.down(purge=True)
    out["elapsed_s"] = time.perf_counter() - t_start
    out["targets"] = targets(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--volumes", type=int, default=100, help="volumes to provision (100)")
    ap.add_argument("--idle-seconds", type=float, default=60, help="idle window; 0 skips (60)")
    ap.add_argument("--settle", type=float, default=10, help="wait before the window (10 s)")
    ap.add_argument("--replicas", type=int, default=3, help="replicas per volume (3)")
    ap.add_argument("--nodes", type=int, default=3, help="cluster nodes (3)")
    ap.add_argument("--size", default="64MiB", help="per volume (64MiB)")
    ap.add_argument("--timeout", type=float, default=120, help="per operation (120 s)")
    ap.add_argument("--dir", default=None, help="cluster directory (default /tmp/chcp-PID)")
    ap.add_argument("--profile", default=None, help="py-spy the idle cluster into this dir")
    ap.add_argument("--profile-seconds", type=float, default=20, help="py-spy for (20 s)")
    ap.add_argument("--json", default=DEFAULT_JSON, help=f"results (default {DEFAULT_JSON})")
    args = ap.parse_args()
    out = run(args)
    print_report(out)
    print(f"\ntotal {out['elapsed_s']:.0f} s")
    if args.json:
        save_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
