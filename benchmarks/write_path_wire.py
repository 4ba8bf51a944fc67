#!/usr/bin/env python3
"""Benchmark: the engine's write path with its replica clients, in one process, no sockets.

``benchmarks/write_path.py`` runs ``Volume.write_nowait`` against in-memory replicas that
answer at once; this one puts the real ``ReplicaClient`` of each replica link under it, so
that what a write costs in the client counts too: the writes of a pass batched and encoded
as one WRITE_BATCH frame per replica, the batch's reply decoded, each write's answer
handed to its future, the fan-out's callbacks and the judging. Each connection's transport
records what it is given; after each pass the benchmark answers every frame it recorded
with a reply as a replica server would (every write stored, its generation), and feeds the
replies to the clients. Run under uvloop, as the engine runs. Reports microseconds of this
process's CPU per write (the median of ``--repeat`` runs): the benchmark's own part (reading
the recorded frames, encoding the replies) is in the figure, the same for any tree.

    .venv/bin/python benchmarks/write_path_wire.py [--replicas 1,3] [--qd 16,1] \\
        [--rounds 2000] [--repeat 5]

To compare two trees, run it from each with ``PYTHONPATH`` set to that tree.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvloop

from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.protocol import replica_wire as wire
from cargohold.replica.client import ReplicaClient, _ClientProtocol
from cargohold.settings import EngineSettings


class RecordingTransport:
    """What a client writes, kept for the benchmark to answer."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def writelines(self, bufs: Any) -> None:
        self.calls.append(list(bufs))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass


def answer(calls: list[list[Any]], first_gen: int) -> bytes:
    """The replies a replica server would send to the frames of ``calls`` (every write
    stored; generations from ``first_gen``, in the order the writes were sent)."""
    out: list[Any] = []
    gen = first_gen
    head = wire.REQUEST.size + wire.BATCH_HEADER.size
    for call in calls:
        start = b"".join(bytes(b) for b in call[:2])[:head]
        _, op, _, rid, *_ = wire.REQUEST.unpack(start[: wire.REQUEST.size])
        if op == wire.Op.WRITE_BATCH:
            n = wire.BATCH_HEADER.unpack(start[wire.REQUEST.size :])[3]
            res = [(wire.STATUS_OK, gen + k, b"") for k in range(n)]
            gen += n
            out += wire.encode_reply_parts(rid, gen - 1, wire.encode_batch_results(res))
        else:
            out += wire.encode_reply_parts(rid, gen, b"")
            gen += 1
    return b"".join(bytes(b) for b in out)


async def run(replicas: int, qd: int, rounds: int) -> float:
    """``rounds`` passes of ``qd`` writes, each answered by every replica: -> µs per write."""
    specs = [ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i) for i in range(replicas)]
    vol = Volume("bench", specs, epoch=1, settings=EngineSettings())
    transports = []
    for link in vol.links:
        proto = _ClientProtocol()
        t = RecordingTransport()
        proto.connection_made(t)  # type: ignore[arg-type]
        client = ReplicaClient(proto, link.spec.id)
        client.batching = True  # a version 2 server: WRITE_BATCH
        link.client, link.mode = client, Mode.RW
        transports.append((proto, t))
    data = memoryview(b"x" * 4096)
    answered = 0

    def done(err: Exception | None) -> None:
        nonlocal answered
        assert err is None, err
        answered += 1

    t0 = time.process_time()
    for r in range(rounds):
        first = vol.gen + 1
        for k in range(qd):
            if not vol.write_nowait(((r * qd + k) * 7919 % 1000) * 4096, data, False, done):
                raise RuntimeError("write_nowait started nothing")
        await asyncio.sleep(0)  # the end of the pass: the clients send their frames
        for proto, t in transports:
            replies = answer(t.calls, first)
            t.calls.clear()
            proto.data_received(replies)
        for _ in range(4):  # the futures' callbacks, the fan-out's judging, the callbacks
            await asyncio.sleep(0)
    elapsed = time.process_time() - t0
    if answered != qd * rounds or any(link.mode is not Mode.RW for link in vol.links):
        raise RuntimeError(f"{answered} of {qd * rounds} writes answered: {vol.links}")
    return elapsed / answered * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,3", help="comma-separated replica counts (1,3)")
    ap.add_argument("--qd", default="16,1", help="comma-separated writes per pass (16,1)")
    ap.add_argument("--rounds", type=int, default=2000, help="passes per run (2000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the median is reported (5)")
    a = ap.parse_args()
    for qd in (int(x) for x in a.qd.split(",")):
        for n in (int(x) for x in a.replicas.split(",")):
            rounds = a.rounds * 16 // qd if qd < 16 else a.rounds
            runs = [uvloop.run(run(n, qd, rounds)) for _ in range(a.repeat)]
            print(
                f"{n} replica(s), {qd} write(s) per pass: {statistics.median(runs):.2f} µs per "
                f"write (median of {a.repeat}; {min(runs):.2f}-{max(runs):.2f})"
            )


if __name__ == "__main__":
    main()
