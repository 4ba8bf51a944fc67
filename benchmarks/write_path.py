#!/usr/bin/env python3
"""Benchmark: the engine's write path alone, in one process, no disks and no sockets.

``Volume.write`` (generation, hold and window checks, the fan-out in
``cargohold/engine/fanout.py``, judging the answers, counters and latency histogram)
against in-memory replicas that answer every request at once: what the engine's Python
costs per write, without the replica servers, the wire or the NBD layer, so that a change
to the write path can be compared on a noisy machine where ``benchmarks/engine.py`` varies
by ±25 % between runs. Reports microseconds of this process's CPU per write (best of
``--repeat`` runs; CPU, not wall time, so that other work on a shared machine counts less).

    .venv/bin/python benchmarks/write_path.py [--replicas 1,3] [--writes 64000] [--qd 16] \\
        [--mode await,task,nowait]

Modes: ``await``, ``qd`` coroutines each awaiting ``Volume.write`` in turn; ``task``, a
Task per write (what the NBD frontend did for every write); ``nowait``, ``write_nowait``
with a callback per write (what it does now for aligned writes), ``qd`` in flight.

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


async def run(replicas: int, writes: int, qd: int, mode: str = "await") -> float:
    """-> microseconds per write."""
    specs = [ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i) for i in range(replicas)]
    vol = Volume("bench", specs, epoch=1, settings=EngineSettings())
    for link in vol.links:
        link.client, link.mode = InstantReplica(), Mode.RW  # type: ignore[assignment]
    data = memoryview(b"x" * 4096)

    total = writes // qd * qd
    t0 = time.process_time()
    if mode == "await":

        async def worker(k: int) -> None:
            for j in range(writes // qd):
                await vol.write(((k * 7919 + j) % 1000) * 4096, data, False)

        await asyncio.gather(*(worker(k) for k in range(qd)))
    else:  # qd in flight; each completion starts the next, as an NBD client keeps its queue
        loop = asyncio.get_running_loop()
        over = loop.create_future()
        started = answered = 0

        def next_write(_: Any = None) -> None:
            nonlocal started, answered
            if _ is not None or mode == "nowait":
                answered += 1
            if answered == total:
                over.set_result(None)
            if started == total:
                return
            off = (started * 7919 % 1000) * 4096
            started += 1
            if mode == "task":
                loop.create_task(vol.write(off, data, False)).add_done_callback(next_write)
            else:
                vol.write_nowait(off, data, False, next_write)

        for _ in range(qd):
            started += 1
            if mode == "task":
                loop.create_task(vol.write(0, data, False)).add_done_callback(next_write)
            else:
                vol.write_nowait(0, data, False, next_write)
        await over
    return (time.process_time() - t0) / total * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,3", help="comma-separated replica counts (1,3)")
    ap.add_argument("--writes", type=int, default=64000, help="4 KiB writes per run (64000)")
    ap.add_argument("--qd", type=int, default=16, help="writes in flight (16)")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported (5)")
    ap.add_argument("--mode", default="await", help="comma-separated: await, task, nowait")
    a = ap.parse_args()
    for mode in a.mode.split(","):
        for n in (int(x) for x in a.replicas.split(",")):
            best = min(asyncio.run(run(n, a.writes, a.qd, mode)) for _ in range(a.repeat))
            print(f"{mode}: {n} replica(s), QD{a.qd}: {best:.2f} us per write (best of {a.repeat})")


if __name__ == "__main__":
    main()
