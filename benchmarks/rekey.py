#!/usr/bin/env python3
"""Benchmark: a data-key rotation's sweep (docs/encryption.md, "Rotating the data key").

One engine with three replica servers on loopback (benchmarks/engine_lab.py) serving an
encrypted volume written in full under an old key. Then, in one run:

1. 4 KiB random writes at QD16 for ``--seconds`` (fio, nbd engine): the consumer alone;
2. ``data-keys [new, old]`` (the engine's control op, online) and the same fio run at once:
   the consumer while the sweep runs (it yields to it: engine/background.py);
3. the sweep left alone until ``done``.

Reported: the consumer's IOPS alone and during the sweep (their ratio), the sweep's rate
while the consumer was busy and once idle (MiB of volume swept per second), and the CPU
per block rewritten (engine and replica servers, /proc/PID/stat) over the idle part.

    .venv/bin/python benchmarks/rekey.py [--size 256MiB] [--seconds 10]

Every process started here is stopped by its PID, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import method  # noqa: E402  (benchmarks/method.py)
from engine_lab import EngineLab, fio  # noqa: E402  (benchmarks/engine_lab.py)

from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.encryption import layout  # noqa: E402

OLD = os.urandom(32)
NEW = os.urandom(32)
VID = bytes.fromhex("be11be11be11be11be11be11be11be11")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    size = layout.logical_size_for(parse_size(args.size))

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    work = tempfile.mkdtemp(prefix="cargohold-rekey-bench-", dir=args.workdir)
    lab = EngineLab(work, size, "rekey", key=OLD, vid=VID)
    try:
        lab.start()
        lab.fill()
        eng = lab.engine
        assert eng is not None
        alone = fio(eng.uri, "randwrite", "4k", 16, size, args.seconds)
        print(f"consumer alone:        {alone['iops']:8.0f} IOPS (4 KiB randwrite QD16)")
        got = eng.ctl(op="data-keys", keys=[base64.b64encode(k).decode() for k in (NEW, OLD)])
        assert got["ok"], got
        t0 = time.monotonic()
        during: dict[str, float] = {}
        th = threading.Thread(
            target=lambda: during.update(fio(eng.uri, "randwrite", "4k", 16, size, args.seconds))
        )
        th.start()
        th.join()
        st = eng.ctl(op="status")["rekey"]
        t1 = time.monotonic()
        busy_groups = st["groups_done"]
        print(
            f"consumer during sweep: {during['iops']:8.0f} IOPS "
            f"({during['iops'] / alone['iops']:.0%} of alone); the sweep did {busy_groups} of "
            f"{st['groups_total']} groups meanwhile "
            f"({busy_groups * layout.GROUP_BYTES / (t1 - t0) / 2**20:.1f} MiB/s)"
        )
        cpu0, blocks0 = method.cpu_ticks(lab.pids), st["blocks_rewritten"]
        while st["state"] == "running":
            time.sleep(0.1)
            st = eng.ctl(op="status")["rekey"]
        t2 = time.monotonic()
        cpu1 = method.cpu_ticks(lab.pids)
        assert st["state"] == "done", st
        idle_groups = st["groups_total"] - busy_groups
        print(
            f"sweep alone:           {idle_groups * layout.GROUP_BYTES / (t2 - t1) / 2**20:8.1f} "
            f"MiB/s of volume ({idle_groups} groups in {t2 - t1:.1f} s), "
            f"{method.cpu_us_per_op(cpu0, cpu1, st['blocks_rewritten'] - blocks0):.0f} CPU µs "
            f"per block rewritten; {st['blocks_rewritten']} blocks rewritten in all; "
            f"load {os.getloadavg()[0]:.1f}"
        )
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
