#!/usr/bin/env python3
"""Benchmark: the encrypting device's write path alone, in one process, no disks and no
sockets (``benchmarks/write_path.py`` for the encrypted volume).

``EncryptedDevice`` over the engine's ``Volume`` with in-memory replicas that answer every
request at once (their servers stop a session at a failed mutation, so the tag block and
the ciphertext go back to back): what the device's and the engine's Python cost per 4 KiB
write, sealing included, without the replica servers, the wire or the NBD layer, so that a
change to the path can be compared on a noisy machine where ``benchmarks/encryption.py``
varies by ±30 % between runs. Reports microseconds of this process's CPU per write, each
run's figure: 4 KiB writes to random blocks of a 1000-block region, or with ``--size``
larger writes in sequence over a region of 64 of them (``--size 1MiB``: whole groups,
as fio's 1 MiB sequential writes), the tag blocks cached.

    .venv/bin/python benchmarks/encrypted_write_path.py [--replicas 3] [--writes 32000] \\
        [--qd 16] [--mode task,nowait] [--size 4KiB]

Modes: ``task``, a Task per write awaiting ``EncryptedDevice.write`` (what the NBD frontend
does for a device without ``write_nowait``); ``nowait``, ``write_nowait`` with a callback per
write, a Task only for the writes it does not start (what the frontend does now).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from write_path import InstantReplica  # benchmarks/write_path.py (on sys.path above)

from cargohold.cli.units import parse_size
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.frontend.encrypted_device import EncryptedDevice
from cargohold.settings import EngineSettings

REGION = 1000  # blocks


class OrderedReplica(InstantReplica):
    stop_on_failure = True  # as a replica server of this release says at HELLO


async def run(replicas: int, writes: int, qd: int, mode: str, size: int = BLOCK) -> float:
    """-> microseconds of CPU per write."""
    specs = [ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i) for i in range(replicas)]
    vol = Volume("bench", specs, epoch=1, settings=EngineSettings())
    for link in vol.links:
        link.client, link.mode = OrderedReplica(), Mode.RW  # type: ignore[assignment]
    dev = EncryptedDevice(vol, BlockCipher(bytes(range(32)), bytes(16)), 1)
    blocks = size // BLOCK
    region = REGION if blocks == 1 else 64 * blocks
    for g in range(-(-region // GROUP)):
        dev._adopt(g, bytes(BLOCK))  # a blank volume's tag blocks, cached
    data = memoryview(os.urandom(size))
    loop = asyncio.get_running_loop()
    over = loop.create_future()
    total = writes // qd * qd
    started = answered = 0
    nowait = mode == "nowait"

    def next_write(_: Any = None) -> None:
        nonlocal started, answered
        if _ is not None:
            answered += 1
        if answered == total:
            over.set_result(None)
        if started >= total:
            return
        if blocks == 1:
            off = (started * 7919 % REGION) * BLOCK
        else:  # in sequence, as fio's sequential writes
            off = started % 64 * size
        started += 1
        if not (nowait and dev.write_nowait(off, data, False, finished)):
            loop.create_task(dev.write(off, data, False)).add_done_callback(next_write)

    def finished(err: Exception | None) -> None:
        if err is not None:
            raise err
        next_write(True)

    t0 = time.process_time()
    for _ in range(qd):
        next_write()
    await over
    return (time.process_time() - t0) / total * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--writes", type=int, default=32000, help="4 KiB writes per run (32000)")
    ap.add_argument("--qd", type=int, default=16, help="writes in flight (16)")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported (5)")
    ap.add_argument("--mode", default="task,nowait", help="comma-separated: task, nowait")
    ap.add_argument("--size", default="4KiB", help="bytes per write, whole blocks (4KiB)")
    a = ap.parse_args()
    size = parse_size(a.size)
    if size <= 0 or size % BLOCK:
        ap.error(f"--size must be a positive multiple of {BLOCK}")
    for _ in range(a.repeat):  # the modes interleaved, each run's figure printed
        for mode in a.mode.split(","):
            us = asyncio.run(run(a.replicas, a.writes, a.qd, mode, size))
            print(
                f"{mode}: {a.replicas} replica(s), QD{a.qd}, {a.size}: {us:.2f} us per write",
                flush=True,
            )


if __name__ == "__main__":
    main()
