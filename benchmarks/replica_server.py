#!/usr/bin/env python3
"""Benchmark: drive a real replica server over loopback with pipelined requests.

Workloads: 4 KiB random writes and reads at queue depth 16, 1 MiB sequential writes and
reads at queue depth 4, 4 KiB random writes at queue depth 1. Prints a table (ops/s, MB/s,
latency percentiles, and the server process's user and system CPU per request, from
/proc/PID/stat), writes JSON. Checksums are always on (they cannot be turned off). Usage:

    .venv/bin/python benchmarks/replica_server.py [--seconds 10] [--size 4GiB] [--no-fio]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks.method import save_json  # noqa: E402
from benchmarks.replica_cpu import cpu_of  # noqa: E402
from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.protocol.replica_wire import FLAG_FUA, Op  # noqa: E402
from cargohold.replica.client import ReplicaClient  # noqa: E402
from tests.support.processes import ServerProc  # noqa: E402


async def run_load(
    c: ReplicaClient, kind: str, bs: int, qd: int, seconds: float, size: int, sequential: bool
) -> dict:
    payload = os.urandom(bs)
    nblk = size // bs
    lat: list[float] = []
    ops = 0
    pos = 0
    deadline = time.perf_counter() + seconds
    rnd = random.Random(7)

    async def worker() -> None:
        nonlocal ops, pos
        while time.perf_counter() < deadline:
            if sequential:
                off = (pos % nblk) * bs
                pos += 1
            else:
                off = rnd.randrange(nblk) * bs
            t0 = time.perf_counter()
            if kind == "write":
                await c.call(Op.WRITE, off, bs, payload)
            else:
                await c.call(Op.READ, off, bs)
            lat.append(time.perf_counter() - t0)
            ops += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(qd)))
    el = time.perf_counter() - t0
    a = np.array(lat) * 1e6
    return {
        "elapsed_s": el,
        "ops_per_s": ops / el,
        "mb_per_s": ops * bs / el / 1e6,
        "lat_mean_us": float(a.mean()),
        "lat_p50_us": float(np.percentile(a, 50)),
        "lat_p99_us": float(np.percentile(a, 99)),
        "lat_p999_us": float(np.percentile(a, 99.9)),
    }


FIO_PLAN = [
    ("4KiB randwrite QD16", "randwrite", "4k", 16),
    ("4KiB randread QD16", "randread", "4k", 16),
    ("1MiB seqwrite QD4", "write", "1M", 4),
    ("1MiB seqread QD4", "read", "1M", 4),
    ("4KiB randwrite QD1", "randwrite", "4k", 1),
]


def fio_local(directory: str, seconds: float, size: int) -> dict[str, dict]:
    """The physical limit: fio on a file in the same directory (libaio, O_DIRECT)."""
    if shutil.which("fio") is None:
        return {}
    path = os.path.join(directory, "fio.dat")
    out = {}
    for name, rw, bs, qd in FIO_PLAN:
        cmd = [
            "fio",
            "--name=x",
            f"--filename={path}",
            f"--size={size}",
            f"--rw={rw}",
            f"--bs={bs}",
            f"--iodepth={qd}",
            "--ioengine=libaio",
            "--direct=1",
            "--time_based",
            f"--runtime={seconds}",
            "--ramp_time=1",
            "--output-format=json",
            "--randrepeat=0",
        ]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        job = res["jobs"][0]
        side = job["write"] if "write" in rw else job["read"]
        pct = side["clat_ns"].get("percentile", {})
        out[name] = {
            "ops_per_s": side["iops"],
            "mb_per_s": side["bw_bytes"] / 1e6,
            "lat_mean_us": side["clat_ns"]["mean"] / 1000,
            "lat_p50_us": pct.get("50.000000", 0) / 1000,
            "lat_p99_us": pct.get("99.000000", 0) / 1000,
            "lat_p999_us": pct.get("99.900000", 0) / 1000,
        }
    os.unlink(path)
    return out


HEAD = f"{'workload':24} {'ops/s':>10} {'MB/s':>9} {'mean us':>9} {'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9}"
CPU_HEAD = f" {'srv user us/op':>14} {'srv sys us/op':>13}"


def row(name: str, r: dict) -> str:
    line = (
        f"{name:24} {r['ops_per_s']:10.0f} {r['mb_per_s']:9.1f} {r['lat_mean_us']:9.0f} "
        f"{r['lat_p50_us']:9.0f} {r['lat_p99_us']:9.0f} {r['lat_p999_us']:9.0f}"
    )
    if "server_user_us_per_op" in r:
        line += f" {r['server_user_us_per_op']:14.1f} {r['server_sys_us_per_op']:13.1f}"
    return line


async def main_async(args: argparse.Namespace) -> list[dict]:
    size = parse_size(args.size)
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        srv = ServerProc([d]).start()
        try:
            c = await ReplicaClient.connect("127.0.0.1", srv.port)
            await c.create("bench", size)
            await c.open("bench", 1)
            # lay the data down first so reads hit allocated blocks
            chunk = os.urandom(1 << 20)
            for off in range(0, size, 1 << 20):
                await c.call(Op.WRITE, off, 1 << 20, chunk)
            await c.call(Op.FLUSH)
            plan = [
                ("4KiB randwrite QD16", "write", 4096, 16, False),
                ("4KiB randread QD16", "read", 4096, 16, False),
                ("1MiB seqwrite QD4", "write", 1 << 20, 4, True),
                ("1MiB seqread QD4", "read", 1 << 20, 4, True),
                ("4KiB randwrite QD1", "write", 4096, 1, False),
            ]
            assert srv.proc is not None
            for name, kind, bs, qd, seq in plan:
                u0, s0 = cpu_of(srv.proc.pid)
                r = await run_load(c, kind, bs, qd, args.seconds, size, seq)
                u1, s1 = cpu_of(srv.proc.pid)
                ops = r["ops_per_s"] * r["elapsed_s"]
                r["server_user_us_per_op"] = 1e6 * (u1 - u0) / ops
                r["server_sys_us_per_op"] = 1e6 * (s1 - s0) / ops
                r["load1"] = os.getloadavg()[0]
                r["workload"] = name
                results.append(r)
            await c.call(Op.FLUSH, flags=FLAG_FUA)
            await c.close()
        finally:
            srv.stop()
        peers = {} if args.no_fio else fio_local(d, args.seconds, size)
        for r in results:
            p = peers.get(r["workload"])
            if p:
                r["local_fio"] = p
                r["ratio_to_local"] = r["ops_per_s"] / p["ops_per_s"] if p["ops_per_s"] else None
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--dir", default=None, help="where the replica lives (default: a temp dir)")
    ap.add_argument("--no-fio", action="store_true", help="skip the physical limit (fio)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import uvloop

    results = uvloop.run(main_async(args))
    print("cargohold replica server (loopback, pipelined, CRC32C on every block):")
    print(HEAD + CPU_HEAD)
    for r in results:
        print(row(r["workload"], r))
    if any("local_fio" in r for r in results):
        print("\nlocal file, fio libaio O_DIRECT (the physical limit; same directory, same run):")
        print(HEAD + "   cargohold/local")
        for r in results:
            if "local_fio" in r:
                print(row(r["workload"], r["local_fio"]) + f"   {r['ratio_to_local']:.2f}")
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds,
        "results": results,
    }
    if args.json:
        save_json(args.json, out)


if __name__ == "__main__":
    main()
