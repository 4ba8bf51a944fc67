#!/usr/bin/env python3
"""Benchmark: the CPU one replica server spends per replicated write.

Drives one real replica server (a process of its own, on loopback, plain TCP) the way a
volume's engine does: a client that spoke HELLO version 2, so the writes it has in flight
together go out as WRITE_BATCH frames (``ReplicaClient``'s batching, the engine's own
code), each with the engine's generation. Workloads: 4 KiB random writes at queue depth 16
(``randwrite-4k-qd16``: batches of several writes) and 1 (``randwrite-4k-qd1``: one WRITE
per frame), 1 MiB sequential writes at queue depth 4 (``seqwrite-1m-qd4``), on a replica
filled first. Reported per run: writes/s, and the replica server
process's CPU per write (user, system and both, from /proc/PID/stat over the measured
seconds), writes per frame (its ``batched_writes / write_batches`` counters). Only the
server's CPU is counted, not this client's: the figure is what ``benchmarks/engine.py``
adds per replica server, without the engine's and fio's noise. Workloads are interleaved
and repeated (``--repeats``); medians and min-max are printed.

    .venv/bin/python benchmarks/replica_cpu.py [--seconds 8] [--size 256MiB] [--repeats 3]
        [--workloads randwrite-4k-qd16,randwrite-4k-qd1,seqwrite-1m-qd4] [--fill-bs 1MiB]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.replica.client import ReplicaClient  # noqa: E402
from tests.support.processes import ServerProc  # noqa: E402

WORKLOADS = {  # name: (block size, queue depth, sequential)
    "randwrite-4k-qd16": (4096, 16, False),
    "randwrite-4k-qd1": (4096, 1, False),
    "seqwrite-1m-qd4": (1 << 20, 4, True),
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


async def counters(c: ReplicaClient) -> dict[str, int]:
    return (await c.listing()).get("server", {}).get("counters", {})


async def run(
    c: ReplicaClient, pid: int, bs: int, qd: int, seq: bool, seconds: float, size: int
) -> dict:
    payload = os.urandom(bs)
    nblk = size // bs
    rnd = random.Random(7)
    writes = pos = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal writes, pos
        while time.perf_counter() < deadline:
            pos += 1
            await c.write(((pos % nblk) if seq else rnd.randrange(nblk)) * bs, payload)
            writes += 1

    k0 = await counters(c)
    u0, s0 = cpu_of(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(qd)))
    el = time.perf_counter() - t0
    u1, s1 = cpu_of(pid)
    k1 = await counters(c)
    frames = (
        (k1.get("requests", 0) - k0.get("requests", 0))
        - (k1.get("batched_writes", 0) - k0.get("batched_writes", 0))
        + (k1.get("write_batches", 0) - k0.get("write_batches", 0))
        - 1
    )  # the LIST itself
    return {
        "writes_per_s": writes / el,
        "mb_per_s": writes * bs / el / 1e6,
        "cpu_us_per_write": 1e6 * ((u1 - u0) + (s1 - s0)) / writes,
        "user_us_per_write": 1e6 * (u1 - u0) / writes,
        "sys_us_per_write": 1e6 * (s1 - s0) / writes,
        "writes_per_frame": writes / frames if frames > 0 else 0.0,
        "load1": os.getloadavg()[0],
    }


async def fill(c: ReplicaClient, size: int, bs: int) -> None:
    """Write the replica whole once, so random writes overwrite data: in ``bs`` writes, one
    after the other (1 MiB: as ``benchmarks/engine.py`` fills), or for 4 KiB in a random
    order at queue depth 16 (no two of a batch adjacent: one ``pwrite`` each)."""
    chunk = os.urandom(bs)
    if bs >= 1 << 20:
        for off in range(0, size, bs):
            await c.write(off, chunk)
    else:
        order = list(range(0, size, bs))
        random.Random(3).shuffle(order)

        async def worker(k: int) -> None:
            for off in order[k::16]:
                await c.write(off, chunk)

        await asyncio.gather(*(worker(k) for k in range(16)))
    await c.flush()


async def main_async(args: argparse.Namespace) -> dict[str, list[dict]]:
    size = parse_size(args.size)
    names = args.workloads.split(",")
    out: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        srv = ServerProc([d]).start()
        try:
            assert srv.proc is not None
            c = await ReplicaClient.connect("127.0.0.1", srv.port)
            await c.negotiate()
            await c.create("bench", size)
            await c.open("bench", 1)
            await fill(c, size, parse_size(args.fill_bs))
            for rep in range(args.repeats):
                for name in names:
                    bs, qd, seq = WORKLOADS[name]
                    r = await run(c, srv.proc.pid, bs, qd, seq, args.seconds, size)
                    out[name].append(r)
                    print(
                        f"run {rep + 1} {name:18} {r['writes_per_s']:8.0f} writes/s "
                        f"{r['cpu_us_per_write']:6.1f} µs CPU/write (user "
                        f"{r['user_us_per_write']:.1f}, sys {r['sys_us_per_write']:.1f}) "
                        f"{r['writes_per_frame']:5.1f} writes/frame, load {r['load1']:.1f}",
                        flush=True,
                    )
            await c.flush()
            await c.close()
        finally:
            srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument(
        "--fill-bs",
        default="1MiB",
        help="the fill's write size: 1MiB as engine.py fills; 4KiB leaves the page cache in "
        "small folios (docs/benchmarks.md, 'Replica server: CPU per write')",
    )
    ap.add_argument("--dir", default=None, help="where the replica lives (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import uvloop

    res = uvloop.run(main_async(args))
    print("median (min-max) of the runs:")
    for name, runs in res.items():
        line = [name]
        keys = ("writes_per_s", "mb_per_s", "cpu_us_per_write", "user_us_per_write")
        for key in (*keys, "sys_us_per_write"):
            v = [r[key] for r in runs]
            line.append(f"{key} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
        print("  " + "; ".join(line))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": res}, f)


if __name__ == "__main__":
    main()
