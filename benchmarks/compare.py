#!/usr/bin/env python3
"""Benchmark: comparing two replicas by their checksum maps (issue 14's divergence checks).

Two replica servers (real processes on loopback), one replica each of a volume of
``--size``; ``--fill`` of every 1 MiB of it is written (the same data on both, 32 MiB per
write, generations as an engine numbers them), so the block maps are mostly populated. Then,
timed from the client side, as the engine does them (``cargohold/engine/compare.py``):

- ``rebuild``: the post-rebuild verification: ``compare.differing`` over the whole volume in
  2 GiB CHECKSUMS calls with one digest per 16 MiB window (equal replicas: digests only).
- ``rebuild_diverged``: the same after 64 blocks scattered over the volume were changed on
  one replica (64 windows fetch their per-block maps), plus ``compare.recopy`` of them.
- ``scrub``: the scrub's cross-replica comparison: per ``scrub_window`` (4 MiB by default)
  one INFO and one CHECKSUMS per replica (the per-replica SCRUB, which reads data, is not
  included: it is timed in docs/reliability.md already).

No data is read for a comparison; the maps are read through the page cache (a first pass
after the writes finds them cached, as a rebuild that just wrote them does).

    .venv/bin/python benchmarks/compare.py --size 1GiB --dir /var/tmp/cmp
    .venv/bin/python benchmarks/compare.py --size 8GiB --dir /var/tmp/cmp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.constants import BLOCK_SIZE, MIB  # noqa: E402
from cargohold.engine import compare  # noqa: E402
from cargohold.replica.client import ReplicaClient  # noqa: E402
from tests.support.processes import ServerProc  # noqa: E402

CHUNK = 32 * MIB


async def run(size: int, fill: float, window: int, ports: list[int]) -> dict[str, float]:
    clients = []
    for i, port in enumerate(ports):
        c = await ReplicaClient.connect("127.0.0.1", port)
        await c.create(f"r{i}", size)
        await c.open(f"r{i}", 1)
        clients.append(c)
    keep = max(1, int(MIB * fill) // BLOCK_SIZE) * BLOCK_SIZE  # bytes written per MiB
    pattern = bytearray(os.urandom(CHUNK))
    t0 = time.monotonic()
    gen = 0
    for off in range(0, size, CHUNK):
        n = min(CHUNK, size - off)
        mv = memoryview(pattern)[:n]
        gen += 1
        for c in clients:  # written as ranges of `keep` bytes in every MiB: holes between
            if keep >= MIB:
                await c.write(off, mv, generation=gen)
        if keep < MIB:
            for m in range(0, n, MIB):
                gen += 1
                for c in clients:
                    await c.write(off + m, mv[m : m + keep], generation=gen)
    for c in clients:
        await c.flush()
    out: dict[str, float] = {"fill_seconds": round(time.monotonic() - t0, 1)}
    timeout = 600.0

    t0 = time.monotonic()
    for off, length in compare.ranges(size):
        blocks, _ = await compare.differing(clients, off, length, timeout)
        assert blocks.size == 0, blocks[:10]
    out["rebuild_seconds"] = round(time.monotonic() - t0, 3)

    step = size // BLOCK_SIZE // 64
    for k in range(64):
        gen += 1
        await clients[1].write(k * step * BLOCK_SIZE, os.urandom(BLOCK_SIZE), generation=gen)
    t0 = time.monotonic()
    found = 0
    for off, length in compare.ranges(size):
        blocks, _ = await compare.differing(clients, off, length, timeout)
        found += int(blocks.size)
        if blocks.size:
            await compare.recopy(clients[0], clients[1], blocks, timeout)
    out["rebuild_diverged_seconds"] = round(time.monotonic() - t0, 3)
    out["rebuild_diverged_found"] = found

    t0 = time.monotonic()
    for off in range(0, size, window):
        length = min(window, size - off)
        await asyncio.gather(*(c.info() for c in clients))
        blocks, _ = await compare.differing(clients, off, length, timeout)
        assert blocks.size == 0
    out["scrub_seconds"] = round(time.monotonic() - t0, 3)
    for c in clients:
        await c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--fill", type=float, default=0.9, help="fraction of every MiB written")
    ap.add_argument("--window", default="4MiB", help="the scrub window")
    ap.add_argument("--dir", required=True, help="scratch directory (removed afterwards)")
    a = ap.parse_args()
    size = parse_size(a.size)
    servers = []
    try:
        for i in range(2):
            d = os.path.join(a.dir, f"node-{i}")
            os.makedirs(d, exist_ok=True)
            servers.append(ServerProc([d]).start())
        result = asyncio.run(run(size, a.fill, parse_size(a.window), [s.port for s in servers]))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(a.dir, ignore_errors=True)
    print(json.dumps({"size": a.size, "fill": a.fill, **result}))


if __name__ == "__main__":
    main()
