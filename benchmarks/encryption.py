#!/usr/bin/env python3
"""Benchmark: what encryption at rest costs on the data path (issue #19, "Tests and figures").

One engine with three replica servers on loopback, started fresh for every run, serving a
plain volume and an encrypted one (``--data-key-fd``: AES-256-GCM per 4 KiB block under a
key derived per engine start, a tag block per 64 blocks; docs/encryption.md), interleaved:
every repetition runs both, in alternating order, so the two see the same machine within a
minute of each other. The
replica links are in clear (``--plaintext``) in both, so the difference is encryption's
alone. Workloads (fio, ``--ioengine=nbd``): 4 KiB random write and read at QD16, 1 MiB
sequential write and read at QD4, over a region written in full first (reads of written
blocks, so the reads decrypt). Reported per mode: median and spread (min-max) of IOPS and
MB/s over the repetitions, encryption's cost as the ratio of the medians, and the CPU an
operation costs (µs of CPU of the engine and the three replica servers together per
operation, from /proc/PID/stat; robust on a shared machine where throughput is not), with
the host's load. Writeback is settled before every measured run. Last, the cipher alone in
this process (µs per 4 KiB block sealed and opened), and ``seal_run``/``open_run`` over
256 blocks on the native path (the C extension) and the pure-Python one; ``--cipher-only``
measures just that, without engines. ``--profile DIR``: py-spy (``--native``) records
the engine during the first repetition's measured runs, one raw (collapsed-stack) file per
mode and workload in DIR; the sampling slows the engine, so those runs' figures are not
comparable with unprofiled ones.

    .venv/bin/python benchmarks/encryption.py [--repeats 3] [--seconds 10] [--size 256MiB] \\
        [--json benchmarks/results/encryption.json] [--cipher-only] [--profile DIR]

Every process started here is stopped by its PID, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import method  # noqa: E402  (benchmarks/method.py)
from engine_lab import EngineLab  # noqa: E402  (benchmarks/engine_lab.py)

from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.encryption import layout, native  # noqa: E402
from cargohold.encryption.block_cipher import BlockCipher, encode_slot  # noqa: E402

WORKLOADS = {
    "randwrite-4k-qd16": ("randwrite", "4k", 16),
    "randread-4k-qd16": ("randread", "4k", 16),
    "seqwrite-1m-qd4": ("write", "1M", 4),
    "seqread-1m-qd4": ("read", "1M", 4),
    # latency-bound: what one round trip more or less per write shows in (not by default)
    "randwrite-4k-qd1": ("randwrite", "4k", 1),
}
OPTIONAL = {"randwrite-4k-qd1"}
KEYS = ("iops", "mb_per_s", "cpu_us_per_op", "cpu_us_per_op_engine")
KEY = os.urandom(32)
VID = os.urandom(16)


def cipher_alone(n: int = 20000) -> dict[str, float]:
    """µs per 4 KiB block sealed and opened by the block cipher, in this process."""
    c = BlockCipher(KEY, VID)
    plain = os.urandom(4096)
    t0 = time.perf_counter()
    for i in range(n):
        ct, tag = c.seal(i, 1 << 32 | 1, plain)
    t1 = time.perf_counter()
    entry = encode_slot(c.slot(1 << 32 | 1, tag)) + bytes(32)
    for _ in range(n):
        if c.open_block(n - 1, ct, entry) is None:
            raise RuntimeError("cipher_alone: the sealed block does not open")
    t2 = time.perf_counter()
    return {"seal_us": 1e6 * (t1 - t0) / n, "open_us": 1e6 * (t2 - t1) / n}


def cipher_runs(blocks: int = 256, rounds: int = 30) -> dict[str, float]:
    """µs per 4 KiB block of ``seal_into`` and ``open_run`` over runs of ``blocks`` blocks
    (one GROUP of tag entries per 64 blocks, as the engine calls them), on the native path
    and the Python one (docs/encryption.md, "Cost"): the median of ``rounds`` of CPU time
    of this process (the machine's load moves it less than wall time)."""
    c = BlockCipher(KEY, VID)
    v = 1 << 32 | 1
    plain = os.urandom(blocks * layout.BLOCK)
    ct = bytearray(len(plain))
    tags = bytearray(blocks * layout.ENTRY)
    out = bytearray(len(plain))
    step = min(blocks, layout.GROUP)
    result: dict[str, float] = {}
    before = native.runs, native.why
    paths = ("native", "python") if native.built is not None else ("python",)
    try:
        for path in paths:
            native.use(path == "native")
            seal, opn = [], []
            for _ in range(rounds):
                t0 = time.process_time()
                sealed = [
                    c.seal_into(
                        a,
                        v,
                        plain[a * layout.BLOCK : (a + step) * layout.BLOCK],
                        memoryview(ct)[a * layout.BLOCK : (a + step) * layout.BLOCK],
                    )
                    for a in range(0, blocks, step)
                ]
                t1 = time.process_time()
                for a, seals in zip(range(0, blocks, step), sealed, strict=True):
                    c.put_sealed(tags, a, v, seals)  # the tag entries (not timed)
                t1b = time.process_time()
                for a in range(0, blocks, step):
                    p, e = a * layout.BLOCK, a * layout.ENTRY
                    bad = c.open_run(
                        a,
                        memoryview(ct)[p : p + step * layout.BLOCK],
                        memoryview(tags)[e : e + step * layout.ENTRY],
                        memoryview(out)[p : p + step * layout.BLOCK],
                    )
                    if bad:
                        raise RuntimeError(f"cipher_runs: blocks {bad} do not open")
                t2 = time.process_time()
                seal.append(1e6 * (t1 - t0) / blocks)
                opn.append(1e6 * (t2 - t1b) / blocks)
            if out != plain:
                raise RuntimeError("cipher_runs: the runs do not read back")
            result[f"{path}_seal_us"] = method.spread(seal)["median"]
            result[f"{path}_open_us"] = method.spread(opn)["median"]
    finally:
        native.runs, native.why = before
    return result


def spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """py-spy record process ``pid`` for ``seconds`` (native frames, 499 Hz) into ``out``."""
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds)))]
    cmd += ["--rate", "499", "--native", "--format", "raw", "--output", out]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_cipher_runs(r: dict[str, float], blocks: int) -> None:
    for path in ("native", "python"):
        if f"{path}_seal_us" in r:
            print(
                f"cipher runs of {blocks} blocks, {path:6}: seal_run {r[f'{path}_seal_us']:.2f} µs, "
                f"open_run {r[f'{path}_open_us']:.2f} µs per 4 KiB block"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument(
        "--json", default=os.path.join(ROOT, "benchmarks", "results", "encryption.json")
    )
    ap.add_argument("--workdir", default=None, help="where the replicas live (default: a tmp dir)")
    ap.add_argument(
        "--workloads",
        default=",".join(w for w in WORKLOADS if w not in OPTIONAL),
        help="comma-separated subset of: " + ", ".join(WORKLOADS),
    )
    ap.add_argument(
        "--cipher-only",
        action="store_true",
        help="only the cipher in this process: seal_run/open_run of 256 blocks, native and Python",
    )
    ap.add_argument("--profile", help="py-spy the engine in the first repetition into this dir")
    args = ap.parse_args()
    print(native.status(), flush=True)
    if args.cipher_only:
        print(f"load {os.getloadavg()[0]:.1f}")
        print_cipher_runs(cipher_runs(), 256)
        return
    chosen = [w for w in args.workloads.split(",") if w]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    for w in list(WORKLOADS):
        if w not in chosen:
            del WORKLOADS[w]
    size = layout.logical_size_for(parse_size(args.size))

    def on_signal(signum: int, frame: Any) -> None:  # stop what we started, by PID
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="cargohold-enc-bench-", dir=args.workdir)
    runs: dict[str, dict[str, list[float]]] = {
        m: {f"{w}:{k}": [] for w in WORKLOADS for k in KEYS} for m in ("plain", "encrypted")
    }
    loads: list[float] = []
    try:
        for rep in range(args.repeats):
            for enc in (False, True) if rep % 2 == 0 else (True, False):
                mode = "encrypted" if enc else "plain"
                sys_ = EngineLab(
                    work,
                    size,
                    f"run-{rep}-{'enc' if enc else 'plain'}",
                    key=KEY if enc else None,
                    vid=VID,
                )
                try:
                    sys_.start()
                    sys_.fill()
                    for w, (rw, bs, qd) in WORKLOADS.items():
                        spying = None
                        if args.profile and rep == 0:
                            os.makedirs(args.profile, exist_ok=True)
                            out = os.path.join(args.profile, f"{mode}-{w}.txt")
                            spying = spy(sys_.pids[0], args.seconds, out)
                        try:
                            r = sys_.measure(rw, bs, qd, args.seconds)
                        finally:
                            if spying is not None:
                                try:
                                    spying.wait(timeout=args.seconds + 60)
                                except subprocess.TimeoutExpired:
                                    spying.kill()  # ours, by its handle
                                    spying.wait()
                        for k in KEYS:
                            runs[mode][f"{w}:{k}"].append(r[k])
                        loads.append(os.getloadavg()[0])
                        print(
                            f"repeat {rep + 1} {mode:9} {w:18} {r['iops']:9.0f} IOPS "
                            f"{r['mb_per_s']:8.1f} MB/s {r['cpu_us_per_op']:7.0f} CPU µs/op "
                            f"(engine {r['cpu_us_per_op_engine']:.0f}) load {loads[-1]:.1f}",
                            flush=True,
                        )
                finally:
                    sys_.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "load_before": load_before,
        "load_during": method.spread(loads),
        "commit": subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "args": vars(args),
        "modes": {m: {k: method.spread(v) for k, v in d.items()} for m, d in runs.items()},
        "raw": runs,
        "cipher_alone": cipher_alone(),
        "cipher_runs": cipher_runs(),
        "encryption_native": native.status(),
    }
    cost = {}
    for w in WORKLOADS:
        for k in KEYS:
            p = result["modes"]["plain"][f"{w}:{k}"]["median"]
            e = result["modes"]["encrypted"][f"{w}:{k}"]["median"]
            if k.startswith("cpu"):  # what encryption adds to the CPU an operation costs
                cost[f"{w}:{k}"] = 100 * (e / p - 1) if p else 0.0
            else:  # what encryption takes off the throughput
                cost[f"{w}:{k}"] = 100 * (1 - e / p) if p else 0.0
    result["encryption_cost_pct"] = cost
    result["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print()
    for w in WORKLOADS:
        for k in KEYS:
            p, e = (result["modes"][m][f"{w}:{k}"] for m in ("plain", "encrypted"))
            print(
                f"{w:18} {k:20} plain {p['median']:9.1f} ({p['min']:.1f}-{p['max']:.1f})  "
                f"encrypted {e['median']:9.1f} ({e['min']:.1f}-{e['max']:.1f})  "
                f"cost {cost[f'{w}:{k}']:5.1f}%"
            )
    ca = result["cipher_alone"]
    print(f"cipher alone: seal {ca['seal_us']:.1f} µs, open {ca['open_us']:.1f} µs per 4 KiB")
    print_cipher_runs(result["cipher_runs"], 256)
    print(f"load during: {result['load_during']}")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
