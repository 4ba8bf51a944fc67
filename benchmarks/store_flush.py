#!/usr/bin/env python3
"""Benchmark: the CPU a replica store's FLUSH costs, as the replica server runs it (through
``FlushGate``, the syncs in a thread), with no server in the way.

Two loops on a FileStore in ``--dir``: ``empty``, ``50 * --n`` times a FLUSH with nothing
written since the last (no sync, only the bookkeeping around it), and ``write``, ``--n`` times
(one 4 KiB write, then a FLUSH: one ``fdatasync`` of the data file and one of the map).
Prints, per loop, the process's CPU (user + system, all threads) and the wall time per
operation in µs. Used for docs/benchmarks.md, "Replica store: the durable generation's
cost at FLUSH"; run it from a worktree of the commit to measure (it imports the
``cargohold`` beside it).

    .venv/bin/python benchmarks/store_flush.py [--dir /tmp] [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.store.file_store import FileStore  # noqa: E402
from cargohold.store.flush_gate import FlushGate  # noqa: E402

BLOCK = 4096


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def loop(store: FileStore, gate: FlushGate, n: int, write: bool, g: int) -> int:
    data = os.urandom(BLOCK)
    for i in range(n):
        if write:
            g += 1
            store.write((i % 256) * BLOCK, data, generation=g)
        await gate.flush(store)
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    where = tempfile.mkdtemp(prefix="store-flush-", dir=args.dir)
    try:
        store = FileStore.create(os.path.join(where, "r"), 64 << 20)
        gate = FlushGate()
        g = asyncio.run(loop(store, gate, 200, True, 0))  # warm up: map pages, threads
        out = {}
        for name, write in (("empty", False), ("write", True)):
            c0, t0 = cpu(), time.perf_counter()
            n = args.n if write else 50 * args.n  # cheap: more of them, for a steady figure
            g = asyncio.run(loop(store, gate, n, write, g))
            c1, t1 = cpu(), time.perf_counter()
            out[name] = {
                "n": n,
                "cpu_us": round((c1 - c0) / n * 1e6, 3),
                "wall_us": round((t1 - t0) / n * 1e6, 3),
            }
        store.close()
        print(json.dumps(out))
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
