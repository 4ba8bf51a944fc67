#!/usr/bin/env python3
"""Benchmark: the engine's write path alone, in one process, no disks and no sockets.

``Volume.write`` (generation, hold and window checks, the fan-out in
``cargohold/engine/fanout.py``, judging the answers, counters and latency histogram)
against in-memory replicas that answer every request at once: what the engine's Python
costs per write, without the replica servers, the wire or the NBD layer, so that a change
to the write path can be compared on a noisy machine where ``benchmarks/engine.py`` varies
by ±25 % between runs. Reports microseconds per write (best of ``--repeat`` runs).

    .venv/bin/python benchmarks/write_path.py [--replicas 1,3] [--writes 64000] [--qd 16]

To compare two trees, run it from each with ``PYTHONPATH`` set to that tree.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.protocol.replica_wire import STATUS_OK, Reply
from cargohold.settings import EngineSettings


class InstantReplica:
    """Answers every request at once with the generation it carried."""

    generation = 0

    def send(self, op: int, offset: int = 0, length: int = 0, payload: Any = b"",
             flags: int = 0, args: Any = None, generation: int = 0) -> asyncio.Future[Reply]:  # fmt: skip
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if generation:
            self.generation = generation
        fut.set_result(Reply(STATUS_OK, 1, self.generation, b""))
        return fut

    def check(self, reply: Reply) -> Reply:
        return reply

    def close_nowait(self) -> None:
        pass


async def run(replicas: int, writes: int, qd: int) -> float:
    """-> microseconds per write."""
    specs = [ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i) for i in range(replicas)]
    vol = Volume("bench", specs, epoch=1, settings=EngineSettings())
    for link in vol.links:
        link.client, link.mode = InstantReplica(), Mode.RW  # type: ignore[assignment]
    data = memoryview(b"x" * 4096)

    async def worker(k: int) -> None:
        for j in range(writes // qd):
            await vol.write(((k * 7919 + j) % 1000) * 4096, data, False)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(qd)))
    return (time.perf_counter() - t0) / (writes // qd * qd) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,3", help="comma-separated replica counts (1,3)")
    ap.add_argument("--writes", type=int, default=64000, help="4 KiB writes per run (64000)")
    ap.add_argument("--qd", type=int, default=16, help="writes in flight (16)")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported (5)")
    a = ap.parse_args()
    for n in (int(x) for x in a.replicas.split(",")):
        best = min(asyncio.run(run(n, a.writes, a.qd)) for _ in range(a.repeat))
        print(f"{n} replica(s), QD{a.qd}: {best:.2f} us per write (best of {a.repeat})")


if __name__ == "__main__":
    main()
