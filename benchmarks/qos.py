#!/usr/bin/env python3
"""Benchmark: noisy neighbours. Two volumes share one "node" — the same three replica
servers, the same disk, the same two cores — and the victim's tail latency is measured
with the aggressor absent, unlimited, and held to a QoS limit (docs/qos.md).

    victim     4 KiB random read/write (50/50) at QD1, fio's nbd engine
    aggressor  4 KiB random read/write (50/50) at QD32, fio's nbd engine

Phases, each ``--seconds`` long, the victim measured while the aggressor runs:
``solo`` (no aggressor), ``unlimited`` (the aggressor without limits), ``limited`` (the
aggressor's engine given ``max_iops`` = ``--limit`` online, through its control op ``qos``),
``solo-after`` (no aggressor again: how far the host itself drifted during the run).
Reported per phase: the victim's read and write p50/p99 latency and IOPS, the aggressor's
IOPS, and the victim's p99 relative to solo. The host's load average is printed with the
results (figures on this shared machine move between runs: compare within one run).

    .venv/bin/python benchmarks/qos.py [--seconds 15] [--limit 500] [--json FILE]

Every process started here (replica servers, engines, fio) is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.cli import fio  # noqa: E402
from tests.support.engine import EngineProc  # noqa: E402
from tests.support.replica_cluster import ReplicaServers  # noqa: E402

MIB = 1 << 20
SIZE = 256 * MIB


def fio_cmd(uri: str, qd: int, seconds: float, name: str) -> list[str]:
    cmd = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw"]
    cmd += ["--rwmixread=50", "--bs=4k", f"--iodepth={qd}", "--time_based"]
    cmd += [f"--runtime={int(seconds * 1000)}ms", f"--size={SIZE}", "--randrepeat=0"]
    cmd += ["--norandommap", "--output-format=json", "--lat_percentiles=1"]
    return [*cmd, "--percentile_list=50:99:99.9"]


def sides(out: str) -> dict[str, Any]:
    job = fio.parse_report(out)["jobs"][0]
    r, w = fio.job_figures(job, "read"), fio.job_figures(job, "write")
    return {
        "iops": round(r["ops_per_s"] + w["ops_per_s"]),
        "read_p50_us": round(r["lat_p50_us"]),
        "read_p99_us": round(r["lat_p99_us"]),
        "write_p50_us": round(w["lat_p50_us"]),
        "write_p99_us": round(w["lat_p99_us"]),
    }


def phase(victim: EngineProc, aggressor: EngineProc | None, seconds: float) -> dict[str, Any]:
    agg = None
    if aggressor is not None:  # starts first and runs past the victim's window
        agg = subprocess.Popen(
            fio_cmd(aggressor.uri, 32, seconds + 2, "aggressor"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
    try:
        v = subprocess.run(
            fio_cmd(victim.uri, 1, seconds, "victim"), capture_output=True, text=True, check=True
        )
        out = {"victim": sides(v.stdout)}
        if agg is not None:
            a_out, _ = agg.communicate(timeout=seconds + 60)
            out["aggressor"] = sides(a_out)
        return out
    finally:
        if agg is not None and agg.poll() is None:
            agg.terminate()
            agg.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--limit", type=int, default=500, help="the aggressor's max_iops")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    fio.check_fio()
    with tempfile.TemporaryDirectory(prefix="qos-bench-") as tmp:
        servers = ReplicaServers(Path(tmp), 3)
        engines: list[EngineProc] = []
        try:
            for vol in ("victim", "aggressor"):
                for i in range(3):
                    servers.create_replica(i, f"{vol[0]}{i}", SIZE)
            specs = {
                vol: [f"{vol[0]}{i}@127.0.0.1:{servers.servers[i].port}" for i in range(3)]
                for vol in ("victim", "aggressor")
            }
            victim = EngineProc("victim", specs["victim"], 1, tmp, local="v0").start()
            engines.append(victim)
            aggressor = EngineProc("aggressor", specs["aggressor"], 1, tmp, local="a0").start()
            engines.append(aggressor)
            for e in engines:  # fill: reads of holes measure nothing
                subprocess.run(
                    ["fio", "--name=fill", "--ioengine=nbd", f"--uri={e.uri}", "--rw=write",
                     "--bs=1M", "--iodepth=4", f"--size={SIZE}", "--output-format=json"],
                    capture_output=True, check=True,
                )  # fmt: skip
            results: dict[str, Any] = {}
            results["solo"] = phase(victim, None, args.seconds)
            results["unlimited"] = phase(victim, aggressor, args.seconds)
            aggressor.ctl(op="qos", limits={"max_iops": args.limit})
            results["limited"] = phase(victim, aggressor, args.seconds)
            results["limited"]["throttled"] = aggressor.ctl(op="status")["qos"]
            results["solo-after"] = phase(victim, None, args.seconds)  # the host's drift
        finally:
            for e in engines:
                e.stop()
            servers.stop()
    solo = results["solo"]["victim"]
    out = {
        "seconds": args.seconds,
        "limit_iops": args.limit,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "phases": results,
    }
    print(f"host load average {out['load_average']}, {out['cpus']} CPUs")
    print(
        f"{'phase':<10} {'victim IOPS':>11} {'r p99 us':>9} {'w p99 us':>9} {'vs solo':>8} {'aggr IOPS':>9}"
    )
    for name, r in results.items():
        v = r["victim"]
        rel = max(v["read_p99_us"] / solo["read_p99_us"], v["write_p99_us"] / solo["write_p99_us"])
        r["victim_p99_vs_solo"] = round(rel, 2)
        agg = r.get("aggressor", {}).get("iops", "-")
        print(
            f"{name:<10} {v['iops']:>11} {v['read_p99_us']:>9} {v['write_p99_us']:>9} "
            f"{rel:>7.2f}x {agg:>9}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
