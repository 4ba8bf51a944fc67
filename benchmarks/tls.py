#!/usr/bin/env python3
"""Benchmark: what mutual TLS costs on the data path (issue #16, "Figures").

One engine with three replica servers on loopback, started fresh for every run, in three
modes: ``tls``, as cargohold runs (a test CA's certificates: replica servers role
``replica``, the engine role ``engine``; the engine's local replica over its server's unix
socket in clear, the other two over mutual TLS), ``tls-tcp`` (all three links mutual TLS
over TCP, as before the local link), and ``plain`` (``--plaintext``, all TCP), interleaved:
every repetition runs all three, in rotating order, so the modes see the same machine
within a minute or two of each other. Workloads
(fio, ``--ioengine=nbd``): 4 KiB random write at QD16 and 1 MiB sequential write at QD4.
Reported per mode: median and spread (min-max) of IOPS and MB/s over the repetitions, and
TLS's cost as the ratio of the medians; and the CPU an operation costs (µs of CPU of the
engine and the three replica servers together per write, from /proc/PID/stat: robust on a
shared machine where throughput is not), with the host's load. Writeback is settled
(``sync``, Dirty near 0) before every measured run. The handshake cost is measured twice: the engine's
start (spawn to NBD listening: three TLS connections, the credentials loaded), and one
connection alone (connect + HELLO round trip, in this process, 50 times). Last, the replica
wire alone (one replica server, one connection from this process, no engine), to tell the
cost of TLS itself from the engine's.

    .venv/bin/python benchmarks/tls.py [--repeats 3] [--seconds 10] [--size 1GiB] \\
        [--json benchmarks/results/tls.json]

Every process started here is stopped by its PID, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
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
from cargohold.replica.client import ReplicaClient  # noqa: E402
from tests.support.processes import ServerProc  # noqa: E402
from tests.support.tls import PKI  # noqa: E402

WORKLOADS = {"randwrite-4k-qd16": ("randwrite", "4k", 16), "seqwrite-1m-qd4": ("write", "1M", 4)}
KEYS = ("iops", "mb_per_s", "cpu_us_per_op", "cpu_us_per_op_engine", "cpu_us_per_op_local")
MODES = ("plain", "tls", "tls-tcp")  # tls: the local replica over its unix socket


async def handshake_ms(pki: PKI, work: str, n: int = 50) -> dict[str, float]:
    """Median milliseconds of connect + HELLO, TLS and plain, against real servers."""
    out = {}
    for tls in (False, True):
        disk = os.path.join(work, f"hs-{tls}")
        os.makedirs(disk)
        s = ServerProc([disk], tls_dir=pki.dir("replica", "hs") if tls else None, log_dir=work)
        s.start()
        try:
            creds = pki.creds("engine", "b") if tls else None
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                c = await ReplicaClient.connect("127.0.0.1", s.port, tls=creds, replica="b-r0")
                await c.hello()
                times.append(time.perf_counter() - t0)
                await c.close()
            out["tls" if tls else "plain"] = 1000 * statistics.median(times)
        finally:
            s.stop()
    return out


async def wire_rate(
    port: int, creds: Any, bs: int, qd: int, seconds: float, unix: str | None = None
) -> float:
    """Writes per second of ``bs`` bytes at queue depth ``qd`` over one connection (over
    the server's unix socket ``unix`` when given)."""
    if unix:
        c = await ReplicaClient.connect(unix=unix)
    else:
        c = await ReplicaClient.connect("127.0.0.1", port, tls=creds, replica="w-r1")
    await c.open("w-r1", 1)
    data, done = os.urandom(bs), 0
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        off = i * bs
        while time.perf_counter() < end:
            await c.write(off % (256 << 20) // bs * bs, data)
            off, done = off + qd * bs, done + 1

    await asyncio.gather(*(worker(i) for i in range(qd)))
    await c.close()
    return done / seconds


async def wire(pki: PKI, work: str, seconds: float, repeats: int) -> dict[str, Any]:
    """The replica wire alone (no engine, one replica server, one connection), TLS vs plain
    TCP vs the unix socket of a TLS server (``unix``: the engine's local link), interleaved:
    MB/s of 4 KiB writes at QD16 and 1 MiB writes at QD4."""
    rates: dict[str, list[float]] = {}
    kinds = ("plain", "tls", "unix")
    for rep in range(repeats):
        for kind in kinds[rep % 3 :] + kinds[: rep % 3]:
            tls = kind != "plain"
            disk = os.path.join(work, f"wire-{rep}-{kind}")
            os.makedirs(disk)
            tls_dir = pki.dir("replica", "wire") if tls else None
            unix = os.path.join(work, f"wire-{rep}.sock") if kind == "unix" else None
            s = ServerProc([disk], unix=unix, tls_dir=tls_dir, log_dir=work)
            s.start()
            try:
                agent = pki.creds("agent", "wire") if tls else None
                c = await ReplicaClient.connect("127.0.0.1", s.port, tls=agent, replica="w-r1")
                await c.create("w-r1", 256 << 20, volume="w")
                await c.close()
                creds = pki.creds("engine", "w") if tls else None
                for name, bs, qd in (("write-4k-qd16", 4096, 16), ("write-1m-qd4", 1 << 20, 4)):
                    r = await wire_rate(s.port, creds, bs, qd, seconds, unix)
                    key = f"{kind}:{name}:mb_per_s"
                    rates.setdefault(key, []).append(r * bs / 1e6)
            finally:
                s.stop()
                shutil.rmtree(disk, ignore_errors=True)
    return {k: summary(v) for k, v in rates.items()}


def summary(values: list[float]) -> dict[str, float]:
    return method.spread(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "tls.json"))
    ap.add_argument("--workdir", default=None, help="where the replicas live (default: a tmp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)

    def on_signal(signum: int, frame: Any) -> None:  # stop what we started, by PID
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="cargohold-tls-bench-", dir=args.workdir)
    pki = PKI(os.path.join(work, "pki"))
    runs: dict[str, dict[str, list[float]]] = {
        m: {
            **{f"{w}:{k}": [] for w in WORKLOADS for k in KEYS},
            "start_s": [],
            "dirty_kib_after_sync": [],
        }
        for m in MODES
    }
    try:
        for rep in range(args.repeats):
            order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
            for mode in order:
                tls = mode != "plain"
                sys_ = EngineLab(
                    work,
                    size,
                    f"run-{rep}-{mode}",
                    pki=pki if tls else None,
                    local_unix=mode == "tls",
                )
                try:
                    sys_.start()
                    runs[mode]["start_s"].append(sys_.start_seconds)
                    assert sys_.engine is not None
                    for w, (rw, bs, qd) in WORKLOADS.items():
                        r = sys_.measure(rw, bs, qd, args.seconds, ramp=2)
                        for k in KEYS:
                            runs[mode][f"{w}:{k}"].append(r[k])
                        runs[mode]["dirty_kib_after_sync"].append(sys_.settled["dirty_kib_after"])
                        print(
                            f"repeat {rep + 1} {mode:5} {w:18} {r['iops']:9.0f} IOPS "
                            f"{r['mb_per_s']:8.1f} MB/s {r['cpu_us_per_op']:7.0f} CPU µs/op "
                            f"(engine {r['cpu_us_per_op_engine']:.0f}, local server "
                            f"{r['cpu_us_per_op_local']:.0f}) "
                            f"load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
                finally:
                    sys_.stop()
        hs = asyncio.run(handshake_ms(pki, work))
        wire_only = asyncio.run(wire(pki, work, args.seconds / 2, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "load_before": load_before,
        "commit": subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "args": vars(args),
        "modes": {m: {k: summary(v) for k, v in d.items()} for m, d in runs.items()},
        "raw": runs,
        "connection_ms": hs,
        "wire_only": wire_only,
    }
    costs: dict[str, dict[str, float]] = {"tls": {}, "tls-tcp": {}}
    for m, cost in costs.items():
        for w in WORKLOADS:
            for k in KEYS:
                p = result["modes"]["plain"][f"{w}:{k}"]["median"]
                t = result["modes"][m][f"{w}:{k}"]["median"]
                if k.startswith("cpu"):  # what TLS adds to the CPU an operation costs
                    cost[f"{w}:{k}"] = 100 * (t / p - 1) if p else 0.0
                else:  # what TLS takes off the throughput
                    cost[f"{w}:{k}"] = 100 * (1 - t / p) if p else 0.0
    result["tls_cost_pct"] = costs["tls"]
    result["tls_tcp_cost_pct"] = costs["tls-tcp"]
    ps, ts = (result["modes"][m]["start_s"]["median"] for m in ("plain", "tls"))
    result["engine_start_extra_ms"] = 1000 * (ts - ps)
    result["load_after"] = os.getloadavg()
    result["cpu_us_per_op"] = {
        f"{m}:{w}": result["modes"][m][f"{w}:cpu_us_per_op"]["median"]
        for m in MODES
        for w in WORKLOADS
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print()
    for w in WORKLOADS:
        for k in KEYS:
            p, t, a = (result["modes"][m][f"{w}:{k}"] for m in MODES)
            print(
                f"{w:18} {k:20} plain {p['median']:9.1f} ({p['min']:.1f}-{p['max']:.1f})  "
                f"tls {t['median']:9.1f} ({t['min']:.1f}-{t['max']:.1f}) "
                f"cost {costs['tls'][f'{w}:{k}']:5.1f}%  "
                f"tls-tcp {a['median']:9.1f} ({a['min']:.1f}-{a['max']:.1f}) "
                f"cost {costs['tls-tcp'][f'{w}:{k}']:5.1f}%"
            )
    print(
        f"engine start: plain {ps:.2f} s, tls {ts:.2f} s (+{result['engine_start_extra_ms']:.0f} "
        f"ms); one connection (connect + HELLO): plain {hs['plain']:.2f} ms, tls "
        f"{hs['tls']:.2f} ms"
    )
    for name in ("write-4k-qd16", "write-1m-qd4"):
        p, t, u = (wire_only[f"{m}:{name}:mb_per_s"]["median"] for m in ("plain", "tls", "unix"))
        print(
            f"replica wire alone, {name}: plain {p:.1f} MB/s, tls {t:.1f} MB/s "
            f"(cost {100 * (1 - t / p):.1f}%), unix {u:.1f} MB/s"
        )
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
