#!/usr/bin/env python3
"""Benchmark: what the merge of a start in doubt asks each current replica — CHANGED with
``generations`` (``ReplicaStore.changed_generations``: each block's newest record above a
generation, from the block maps alone) — against plain CHANGED (``changed_since``), the
delta query every rebuild already makes (docs/reliability.md, "After a machine crash").

A FileStore of ``--size`` GiB in ``--dir``: ``--writes`` random 4 KiB writes above
generation ``1`` (the worst case for runs: scattered blocks, each its own generation), a
few of them left pending (a failed data write). Then ``--runs`` times, interleaved, both
queries over the whole volume in 1 GiB windows (as the engine asks). Prints per query the
process CPU milliseconds per call (median, min, max), the runs or extents found, and the
JSON bytes the replica server would send, as JSON lines.

    .venv/bin/python benchmarks/merge_query.py [--dir /tmp] [--size 64] [--writes 65536] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.constants import BLOCK_SIZE  # noqa: E402
from cargohold.protocol import replica_wire as wire  # noqa: E402
from cargohold.store.file_store import FileStore  # noqa: E402

GIB = 1 << 30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--size", type=int, default=64, help="GiB")
    ap.add_argument("--writes", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    top = tempfile.mkdtemp(dir=a.dir, prefix="merge-query-")
    try:
        size = a.size * GIB
        s = FileStore.create(os.path.join(top, "r"), size)
        s.write(0, b"x" * BLOCK_SIZE, generation=1)
        rnd = random.Random(7)
        blocks = rnd.sample(range(1, size // BLOCK_SIZE), a.writes)
        data = b"y" * BLOCK_SIZE
        for i, b in enumerate(blocks):
            s.write(b * BLOCK_SIZE, data, generation=3 + i)  # a gap at 2: complete through 1
        since = s.generation

        def windows(fn):  # type: ignore[no-untyped-def]
            out = []
            for off in range(0, size, GIB):
                out += fn(off, min(GIB, size - off))
            return out

        queries = {
            "changed_since": lambda o, n: s.changed_since(since, o, n),
            "changed_generations": lambda o, n: s.changed_generations(since, o, n),
        }
        cpu: dict[str, list[float]] = {k: [] for k in queries}
        found: dict[str, int] = {}
        payload: dict[str, int] = {}
        for _ in range(a.runs):
            for name, q in queries.items():
                t0 = time.process_time()
                got = windows(q)
                cpu[name].append((time.process_time() - t0) * 1000)
                found[name] = len(got)
                payload[name] = (
                    len(wire.encode_generation_runs(since, got))
                    if name == "changed_generations"
                    else len(wire.dump_json({"since": since, "extents": got}))
                )
        for name, ms in cpu.items():
            print(
                json.dumps(
                    {
                        "query": name,
                        "size_gib": a.size,
                        "writes": a.writes,
                        "cpu_ms_median": round(statistics.median(ms), 1),
                        "cpu_ms_min": round(min(ms), 1),
                        "cpu_ms_max": round(max(ms), 1),
                        "runs_found": found[name],
                        "json_bytes": payload[name],
                    }
                )
            )
        s.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
