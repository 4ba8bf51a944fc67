#!/usr/bin/env python3
"""Benchmark: full and delta rebuilds on a local cluster of four nodes (manager on SQLite).

Full rebuild: a 4 GiB volume with 2 replicas (``stale_replica_timeout`` 2 s) is attached on
a node holding one of its replicas, and 3 GiB are written through its NBD endpoint (fio's nbd
engine, 1 MiB sequential, QD8, then a FLUSH). The other replica's node is killed (SIGKILL of
its process group); once the manager gives up on the replica it places a new, empty one on
another node and the engine rebuilds it while the volume stays attached. Timed by the engine
(its status, read through its control socket: the new replica's ``rebuild`` record, from
the start of the copy until the replica is RW) and, for comparison, as the manager shows it
(from the new replica's first appearance until it reads ``running``). MB/s = bytes written
/ rebuild time. Target: >= 300 MB/s.

Delta rebuild: another 4 GiB volume, 2 replicas (stale timeout 1 h), 3 GiB written the same
way. The other replica's node is killed; 1% of the volume's 4 KiB blocks, picked at random
(no block twice), are overwritten (fio randwrite 4 KiB QD16, ``io_size`` = 1%, FLUSH); the
node is started again; the agent re-adds the replica and the engine copies what changed
since the generation the replica had persisted. Reported: bytes the engine copied (its
``copied_bytes``: the extent stream, headers included) against the volume's size, time
from the node's start until the volume is healthy, and the engine's own rebuild time.
Target: <= 2% of the volume copied.

    .venv/bin/python benchmarks/rebuild.py [--size 4GiB] [--write 3GiB] \\
        [--json benchmarks/results/rebuild.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.method import save_json  # noqa: E402
from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.control.client import ManagerClient  # noqa: E402
from cargohold.launcher.cluster import LocalCluster  # noqa: E402
from tests.support.engine_control import engine_status  # noqa: E402
from tests.support.polling import wait_until  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "rebuild.json")


def fio(uri: str, *args: str) -> dict[str, Any]:
    cmd = ["fio", "--name=rebuild", "--ioengine=nbd", f"--uri={uri}", "--output-format=json"]
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"fio failed: {' '.join(cmd + list(args))}\n{p.stdout}\n{p.stderr}")
    job = json.loads(p.stdout[p.stdout.index("{") :])["jobs"][0]
    return {"bytes": job["write"]["io_bytes"], "mb_per_s": job["write"]["bw_bytes"] / 1e6}


def write_seq(uri: str, nbytes: int) -> dict[str, Any]:
    return fio(uri, "--rw=write", "--bs=1M", "--iodepth=8", f"--size={nbytes}", "--end_fsync=1")


class Vol:
    """A volume of the benchmark, attached on a node that holds one of its replicas."""

    def __init__(
        self, c: ManagerClient, cl: LocalCluster, name: str, size: int, stale: float
    ) -> None:
        self.c, self.cl, self.name = c, cl, name
        c.create_volume(name, size, replicas=2, stale_replica_timeout=stale)
        v = c.wait_volume(name, lambda v: all(r["state"] != "pending" for r in v["replicas"]), 120)
        while len(v["replicas"]) < 2:
            v = c.wait_volume(name, lambda v: len(v["replicas"]) >= 2, 120)
        self.engine_node = sorted(r["node"] for r in v["replicas"])[0]
        self.other_node = next(r["node"] for r in v["replicas"] if r["node"] != self.engine_node)
        self.old_ids = {r["id"] for r in v["replicas"]}
        c.attach(name, self.engine_node)
        v = c.wait_attached(name, self.engine_node, 120)
        self.uri = v["endpoint"]
        self.sock = os.path.join(cl.nodes[self.engine_node].dir, "run", f"{name}.sock")

    def status(self) -> dict[str, Any]:
        return engine_status(self.sock)

    def link(self, replica_id: str) -> dict[str, Any] | None:
        return next((r for r in self.status()["replicas"] if r["id"] == replica_id), None)

    def healthy(self) -> bool:
        st = self.status()
        return st["robustness"] == "healthy" and all(r["mode"] == "RW" for r in st["replicas"])


def full_rebuild(c: ManagerClient, cl: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    size, nbytes = parse_size(args.size), parse_size(args.write)
    v = Vol(c, cl, "rb-full", size, args.stale)
    w = write_seq(v.uri, nbytes)
    print(f"full: wrote {w['bytes'] / 2**30:.2f} GiB at {w['mb_per_s']:.0f} MB/s", flush=True)
    t_kill = time.monotonic()
    cl.kill_node(v.other_node)
    print(f"full: killed {v.other_node}; waiting for a new replica", flush=True)

    def new_replica() -> dict[str, Any] | None:
        vol = c.volume(v.name)
        return next((r for r in vol["replicas"] if r["id"] not in v.old_ids), None)

    new = wait_until(new_replica, args.timeout, "a replacement replica", 0.05)
    t_new = time.monotonic()
    print(f"full: new replica {new['id']} on {new['node']}; rebuilding", flush=True)
    wait_until(
        lambda: (r := new_replica()) is not None and r["state"] == "running",
        args.timeout,
        "the new replica to be running",
        0.05,
    )
    t_running = time.monotonic()
    link = wait_until(lambda: v.link(new["id"]) or {}, 30, "the engine's rebuild record", 0.05)
    rb = link.get("rebuild") or {}
    secs = float(rb.get("seconds") or 0)
    cl.start_node(v.other_node)
    out = {
        "volume_size": size,
        "written_bytes": w["bytes"],
        "write_mb_per_s": w["mb_per_s"],
        "killed_node": v.other_node,
        "new_replica": new["id"],
        "new_replica_node": new["node"],
        "kill_to_new_replica_s": t_new - t_kill,
        "engine_rebuild_s": secs,
        "engine_copied_bytes": rb.get("copied_bytes"),
        "engine_full": rb.get("full"),
        "manager_observed_s": t_running - t_new,
        "mb_per_s": w["bytes"] / secs / 1e6 if secs else 0.0,
        "mb_per_s_manager_observed": w["bytes"] / (t_running - t_new) / 1e6,
        "rebuild_record": rb,
    }
    c.detach(v.name)
    return out


def delta_rebuild(c: ManagerClient, cl: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    size, nbytes = parse_size(args.size), parse_size(args.write)
    v = Vol(c, cl, "rb-delta", size, 3600)
    w = write_seq(v.uri, nbytes)
    print(f"delta: wrote {w['bytes'] / 2**30:.2f} GiB at {w['mb_per_s']:.0f} MB/s", flush=True)
    away = next(r["id"] for r in c.volume(v.name)["replicas"] if r["node"] == v.other_node)
    gen0 = (v.link(away) or {}).get("generation")
    cl.kill_node(v.other_node)
    blocks = size // 4096
    changed = max(1, round(blocks * args.change / 100))
    ch = fio(
        v.uri,
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        f"--size={size}",
        f"--io_size={changed * 4096}",
        "--end_fsync=1",
    )
    print(
        f"delta: {v.other_node} killed; changed {ch['bytes'] / 2**20:.1f} MiB "
        f"({changed} random 4 KiB blocks, {args.change:g}%); starting it again",
        flush=True,
    )
    t_start = time.monotonic()
    cl.start_node(v.other_node)
    t_up = time.monotonic()
    wait_until(v.healthy, args.timeout, "the volume to be healthy again", 0.05)
    t_healthy = time.monotonic()
    link = v.link(away) or {}
    rb = link.get("rebuild") or {}
    copied = int(rb.get("copied_bytes") or 0)
    out = {
        "volume_size": size,
        "written_bytes": w["bytes"],
        "changed_blocks": changed,
        "changed_bytes": ch["bytes"],
        "changed_pct": 100 * ch["bytes"] / size,
        "replica": away,
        "replica_generation_before": gen0,
        "node_start_s": t_up - t_start,
        "node_start_to_healthy_s": t_healthy - t_start,
        "engine_rebuild_s": rb.get("seconds"),
        "engine_copied_bytes": copied,
        "engine_since_generation": rb.get("since"),
        "engine_full": rb.get("full"),
        "copied_pct_of_volume": 100 * copied / size,
        "copied_vs_changed": copied / ch["bytes"] if ch["bytes"] else 0.0,
        "rebuild_record": rb,
    }
    c.detach(v.name)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    d = args.dir or f"/tmp/chrb-{os.getpid()}"
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_at_start": list(os.getloadavg()),
        "command": " ".join(sys.argv),
    }
    t0 = time.perf_counter()
    cl = LocalCluster.create(d, nodes=4).up(timeout=120)
    try:
        with ManagerClient.discover(dir=d, poll_interval=0.05, timeout=30) as c:
            if "full" in args.parts:
                out["full"] = full_rebuild(c, cl, args)
            if "delta" in args.parts:
                out["delta"] = delta_rebuild(c, cl, args)
    finally:
        cl.down(purge=True)
    out["elapsed_s"] = time.perf_counter() - t0
    out["targets"] = []
    if "full" in out:
        got = out["full"]["mb_per_s"]
        out["targets"].append({"what": "full rebuild, MB/s", "got": got, "target": ">= 300"})
        out["targets"][-1]["met"] = got >= 300
    if "delta" in out:
        got = out["delta"]["copied_pct_of_volume"]
        out["targets"].append({"what": "delta rebuild, % copied", "got": got, "target": "<= 2%"})
        out["targets"][-1]["met"] = got <= 2
    return out


def print_report(out: dict[str, Any]) -> None:
    f = out.get("full")
    if f:
        print(
            f"\nfull rebuild: {f['written_bytes'] / 2**30:.2f} GiB written of "
            f"{f['volume_size'] / 2**30:g} GiB; engine copied "
            f"{(f['engine_copied_bytes'] or 0) / 2**30:.2f} GiB in {f['engine_rebuild_s']:.1f} s "
            f"= {f['mb_per_s']:.0f} MB/s (as the manager saw it: {f['manager_observed_s']:.1f} s, "
            f"{f['mb_per_s_manager_observed']:.0f} MB/s); replacement placed "
            f"{f['kill_to_new_replica_s']:.1f} s after the kill"
        )
    d = out.get("delta")
    if d:
        print(
            f"delta rebuild: {d['changed_blocks']} blocks changed ({d['changed_pct']:.2f}%); "
            f"engine copied {d['engine_copied_bytes'] / 2**20:.1f} MiB = "
            f"{d['copied_pct_of_volume']:.2f}% of the volume "
            f"({d['copied_vs_changed']:.2f}x the changed bytes) in "
            f"{d['engine_rebuild_s'] or 0:.2f} s; healthy {d['node_start_to_healthy_s']:.1f} s "
            f"after the node was started"
        )
    for t in out.get("targets", []):
        verdict = "met" if t["met"] else "MISSED"
        print(f"  {t['what']:26} {t['got']:8.2f} (target {t['target']}): {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="4GiB", help="of each volume (4GiB)")
    ap.add_argument("--write", default="3GiB", help="written before the rebuild (3GiB)")
    ap.add_argument("--change", type=float, default=1.0, help="delta: %% of blocks changed (1)")
    ap.add_argument("--stale", type=float, default=2.0, help="full: stale replica timeout (2 s)")
    ap.add_argument("--parts", default="full,delta", help="full,delta (both)")
    ap.add_argument("--timeout", type=float, default=600, help="per wait (600 s)")
    ap.add_argument("--dir", default=None, help="cluster directory (default /tmp/chrb-PID)")
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
