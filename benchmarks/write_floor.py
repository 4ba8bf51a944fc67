#!/usr/bin/env python3
"""Benchmark: the physical floor of a replicated 1 MiB write on this machine (issue #22).

Issue #22 sets the engine's 1 MiB sequential write at QD4 against nbdkit's file plugin:
3 replicas >= 0.30, 1 replica >= 0.60. This measures what ANY implementation of the engine's
shape can do here: an engine process that fans each write out to N replica processes over
sockets (the first over a unix socket, the others over loopback TCP, as the engine links its
local and remote replicas), each storing into a file with a CRC. Systems, all driven by fio's
nbd engine with the same job, in one run:

    nbdkit     nbdkit's file plugin (C), started as benchmarks/engine.py starts it: the baseline
    floor-1    benchmarks/write_floor_pipeline.py: a router (NBD, one reused buffer, one
               sendmsg per store) and 1 store (recv_into, CRC32C, pwrite, a 12-byte ack)
    floor-3    the same with 3 stores (store 0 over a unix socket, 1 and 2 over loopback TCP)
    floor-3-unix  the same with all 3 stores on unix sockets: what loopback TCP costs
    engine-1   cargohold's engine, 1 replica (benchmarks/engine.py's system, started by it)
    engine-3   cargohold's engine, 3 replicas

The method is benchmarks/engine.py's (its code, imported): every system filled once, then for
each workload every system in turn, the order rotated, ``--repeats`` times; ``sync`` and a
wait for Dirty + Writeback near 0 before every run; medians and the spread; nbdkit's runs in
its ±15 % band or the workload is INVALID. CPU µs per write: of the system's processes
(router + stores, engine + replica servers, nbdkit), fio excluded; ``cpu_us_per_op_with_fio``
in the JSON adds fio's. The workloads: 1 MiB sequential write QD4 (the issue's), and 4 KiB
sequential write QD4, where the copies are 256 x smaller and the CPU per write is mostly the
fixed cost per write (system calls, Python, fio): it bounds the floor's per-write overhead.

    .venv/bin/python benchmarks/write_floor.py [--seconds 10] [--repeats 3] [--size 256MiB] \\
        [--systems nbdkit,floor-1,floor-3,engine-1,engine-3] [--workloads 1m,4k] \\
        [--json benchmarks/results/write_floor.json] [--render JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engine  # noqa: E402  (benchmarks/engine.py: processes, fio, the method)
import method  # noqa: E402

DEFAULT_JSON = os.path.join(engine.ROOT, "benchmarks", "results", "write_floor.json")
PIPELINE = os.path.join(HERE, "write_floor_pipeline.py")

SYSTEMS = ["nbdkit", "floor-1", "floor-3", "floor-3-unix", "engine-1", "engine-3"]
LABELS = {
    "nbdkit": "nbdkit file plugin",
    "floor-1": "floor, 1 store",
    "floor-3": "floor, 3 stores",
    "floor-3-unix": "floor, 3 stores, all on unix sockets",
    "engine-1": "cargohold engine, 1 replica",
    "engine-3": "cargohold engine, 3 replicas",
}
WORKLOADS = {
    "1m": engine.Workload("seqwrite-1m-qd4", "1 MiB seqwrite QD4", "write", "1M", 4, "mbps"),
    "4k": engine.Workload("seqwrite-4k-qd4", "4 KiB seqwrite QD4", "write", "4k", 4, "iops"),
}
# issue #22: 1 MiB seqwrite QD4, (N replicas) -> the least ratio to nbdkit
TARGETS = {1: 0.60, 3: 0.30}


# --- the floor's processes ---------------------------------------------------------------------
def start_floor(bench: engine.Bench, key: str) -> engine.System:
    """N stores, then the router connected to them; its port answers when it is ready.
    ``key``: floor-N (store 0 on a unix socket, the others on loopback TCP) or
    floor-N-unix (all on unix sockets)."""
    n, all_unix = floor_shape(key)
    py = [sys.executable, PIPELINE]
    stores = []
    for i in range(n):
        f = bench._image(f"{key}-s{i}.img")
        if i == 0 or all_unix:  # the local replica's link: a unix socket
            unix = os.path.join(bench.work, f"{key}-s{i}.sock")
            cmd = [*py, "store", "--file", f, "--unix", unix]
            p = engine.Proc(f"{key}-s{i}", cmd, bench.logs, unix=unix, env=bench.env)
        else:
            port = engine.free_port()
            cmd = [*py, "store", "--file", f, "--port", str(port)]
            p = engine.Proc(f"{key}-s{i}", cmd, bench.logs, port=port, env=bench.env)
        stores.append(bench.started.add(p).start())
    specs = [f"unix:{s.unix}" if s.unix else f"tcp:127.0.0.1:{s.port}" for s in stores]
    port = engine.free_port()
    cmd = [*py, "router", "--port", str(port), "--size", str(bench.size)]
    for spec in specs:
        cmd += ["--store", spec]
    router = bench.started.add(engine.Proc(key, cmd, bench.logs, port=port, env=bench.env))
    router.start()
    return engine.System(key, uri=f"nbd://127.0.0.1:{port}/", procs=[router, *stores])


def floor_shape(key: str) -> tuple[int, bool]:
    """floor-N[-unix] -> (N stores, all on unix sockets?)."""
    parts = key.split("-")
    if parts[0] != "floor" or len(parts) not in (2, 3) or not parts[1].isdigit():
        raise ValueError(f"not a floor system: {key}")
    if len(parts) == 3 and parts[2] != "unix":
        raise ValueError(f"not a floor system: {key}")
    return int(parts[1]), len(parts) == 3


def start(bench: engine.Bench, key: str) -> engine.System:
    if key.startswith("floor-"):
        return start_floor(bench, key)
    return bench.start(key)


# --- the summary ---------------------------------------------------------------------------
def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """From one workload's median figures per system: each floor's and engine's ratio to
    nbdkit against issue #22's target; their writes per CPU second as a fraction of nbdkit's
    (nbdkit's CPU per write over theirs, fio included in both: the ratio they would reach
    if all were CPU-bound on the same cores, as a saturated machine makes them); and how
    far each engine is from its floor (its writes/s as a fraction of the floor's, and its
    CPU per write as a multiple)."""
    out: dict[str, Any] = {}
    base = results.get("nbdkit")
    for n, bound in TARGETS.items():
        floor, eng = results.get(f"floor-{n}"), results.get(f"engine-{n}")
        row: dict[str, Any] = {"replicas": n, "target": bound}
        for name, r in (("floor", floor), ("engine", eng)):
            if not (r and base and base["ops_per_s"]):
                continue
            ratio = r["ops_per_s"] / base["ops_per_s"]
            row[f"{name}_vs_nbdkit"] = ratio
            row[f"{name}_meets_target"] = ratio >= bound
            cpu, cpu0 = r.get("cpu_us_per_op_with_fio"), base.get("cpu_us_per_op_with_fio")
            if cpu and cpu0:
                row[f"{name}_per_cpu_vs_nbdkit"] = cpu0 / cpu
        if floor and eng and floor["ops_per_s"] and floor["cpu_us_per_op"]:
            row["engine_vs_floor_ops"] = eng["ops_per_s"] / floor["ops_per_s"]
            row["engine_vs_floor_cpu"] = eng["cpu_us_per_op"] / floor["cpu_us_per_op"]
        out[str(n)] = row
    return out


def verdict(summary: dict[str, Any]) -> list[str]:
    """The conclusion in words, one line per replica count."""
    lines = []
    for n, row in summary.items():
        if "floor_vs_nbdkit" not in row:
            continue
        fl = row["floor_vs_nbdkit"]
        can = "above" if row["floor_meets_target"] else "BELOW"
        s = f"{n} replica(s): the floor is {fl:.2f}x nbdkit, {can} the target {row['target']:.2f}"
        if "floor_per_cpu_vs_nbdkit" in row:
            s += f" (writes per CPU second: {row['floor_per_cpu_vs_nbdkit']:.2f}x nbdkit's)"
        if "engine_vs_nbdkit" in row:
            s += f"; the engine {row['engine_vs_nbdkit']:.2f}x nbdkit"
        if "engine_vs_floor_ops" in row:
            s += (
                f", {row['engine_vs_floor_ops']:.2f}x the floor's writes/s at "
                f"{row['engine_vs_floor_cpu']:.1f}x its CPU per write"
            )
        lines.append(s)
    return lines


def rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows: per system the figures the report shows."""
    out = []
    for key, r in results.items():
        sp = r.get("ops_spread", {})
        out.append(
            {
                "system": key,
                "ops_per_s": r["ops_per_s"],
                "mb_per_s": r["mb_per_s"],
                "vs_nbdkit": r.get("ops_vs_nbdkit"),
                "p99_us": r["lat_p99_us"],
                "cpu_us_per_op": r["cpu_us_per_op"],
                "cpu_us_per_op_with_fio": r.get("cpu_us_per_op_with_fio"),
                "spread_pct": 100 * sp["spread"] if sp else None,
                "load1": r.get("load1"),
            }
        )
    return out


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_table(title: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title} (CPU µs per write: the system's processes, fio excluded)")
    print(
        f"{'system':30} {'writes/s':>9} {'MB/s':>8} {'/nbdkit':>8} {'p99 µs':>8} "
        f"{'CPU µs/w':>9} {'+fio':>7} {'spread':>7} {'load':>5}"
    )
    for r in rows(results):
        print(
            f"{LABELS[r['system']]:30} {r['ops_per_s']:9,.0f} {r['mb_per_s']:8.1f} "
            f"{_f(r['vs_nbdkit'], '8.2f')} {r['p99_us']:8,.0f} {r['cpu_us_per_op']:9,.0f} "
            f"{_f(r['cpu_us_per_op_with_fio'], '7,.0f')} {_f(r['spread_pct'], '6.0f')}% "
            f"{_f(r['load1'], '5.1f')}",
            flush=True,
        )


def markdown(out: dict[str, Any]) -> str:
    """docs/benchmarks.md's tables, from the JSON."""
    lines = []
    for wk, per in out["results"].items():
        lines += [
            f"**{out['titles'][wk]}** (medians of {out['repeats']} interleaved runs)",
            "",
            "| system | writes/s | MB/s | / nbdkit | p99 µs | CPU µs/write | with fio "
            "| writes/s spread | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows(per):
            lines.append(
                f"| {r['system']} | {r['ops_per_s']:,.0f} | {r['mb_per_s']:,.0f} "
                f"| {_f(r['vs_nbdkit'], '.2f')} | {r['p99_us']:,.0f} "
                f"| {r['cpu_us_per_op']:,.0f} | {_f(r['cpu_us_per_op_with_fio'], ',.0f')} "
                f"| ±{_f(None if r['spread_pct'] is None else r['spread_pct'] / 2, '.0f')}% "
                f"| {_f(r['load1'], '.1f')} |"
            )
        v = out.get("validity", {}).get(wk, {})
        if v and not v.get("valid", True):
            lines.append("\n**INVALID** (nbdkit out of band): " + "; ".join(v["reasons"]))
        for s in verdict(summarize(per)):  # computed here from the figures, as in the run
            lines.append(f"\n{s}.")
        lines.append("")
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds per run (10)")
    ap.add_argument("--ramp", type=float, default=2, help="seconds before measuring (2)")
    ap.add_argument("--size", default="256MiB", help="of every file and volume (256MiB)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs (3): medians")
    ap.add_argument("--systems", default=None, help=f"comma-separated subset of {SYSTEMS}")
    ap.add_argument("--workloads", default="1m,4k", help="comma-separated: 1m, 4k (both)")
    ap.add_argument("--dir", default=None, help="where the files live (default: a temp dir)")
    ap.add_argument("--json", default=DEFAULT_JSON, help=f"results (default {DEFAULT_JSON})")
    ap.add_argument("--render", default=None, help="print the markdown of a saved JSON; no run")
    args = ap.parse_args(argv)
    args.systems = engine.pick(args.systems, SYSTEMS, "system")
    args.workloads = engine.pick(args.workloads, list(WORKLOADS), "workload")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    # what engine.Bench and engine.measure read
    args.transport, args.local_link, args.profile, args.fsync = "tcp", "unix", None, 0
    return args


def run(args: argparse.Namespace, started: engine.Started) -> dict[str, Any]:
    systems = engine.check_tools(args.systems)  # fio must be there; nbdkit may be skipped
    workloads = [WORKLOADS[k] for k in args.workloads]
    out: dict[str, Any] = {
        "machine": {
            **engine.machine(),
            "nbdkit": subprocess.run(
                ["nbdkit", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "loadavg_at_start": method.host_load(),
        "command": " ".join(["benchmarks/write_floor.py", *sys.argv[1:]]),
        "seconds": args.seconds,
        "ramp": args.ramp,
        "size": engine.parse_size(args.size),
        "repeats": args.repeats,
        "titles": {w.key: w.title for w in workloads},
        "systems": {},
        "results": {},
    }
    print(
        f"{out['machine']['cpus']} CPUs, {out['machine']['platform']}; load {out['loadavg_at_start']}"
    )
    est = args.repeats * len(systems) * len(workloads) * (args.seconds + args.ramp + 4)
    print(
        f"{args.repeats} x {len(systems)} systems x {len(workloads)} workloads: ~{est / 60:.0f} min"
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cargohold-floor-", dir=args.dir) as work:
        bench = engine.Bench(args, work, started)
        live: dict[str, engine.System] = {}
        for key in systems:
            live[key] = start(bench, key)
            secs = engine.fill(live[key], bench.size, started)
            out["systems"][key] = {"label": LABELS[key], "uri": live[key].uri, "fill_s": secs}
            print(f"{key}: started and filled in {secs:.1f} s", flush=True)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {w.key: {} for w in workloads}
        for rep in range(args.repeats):
            for w in workloads:
                keys = list(live)
                keys = keys[rep % len(keys) :] + keys[: rep % len(keys)]  # interleaved
                results = {}
                for key in keys:
                    results[key] = engine.measure(live[key], w, args, bench.size, started)
                    runs[w.key].setdefault(key, []).append(results[key])
                engine.ratios(results)
                print_table(
                    f"{w.title}, repeat {rep + 1} of {args.repeats}", {k: results[k] for k in live}
                )
        for w in workloads:
            out["results"][w.key] = {k: engine.median_run(runs[w.key][k]) for k in live}
            engine.ratios(out["results"][w.key])
        out["validity"] = engine.judge(runs)
        for key, s in live.items():  # an engine that dropped a replica mid-run measured less
            if s.control:
                st = engine.engine_status(s.control)
                out["systems"][key]["robustness"] = st.get("robustness")
                if st.get("robustness") != "healthy":
                    print(f"WARNING: {key} ended {st.get('robustness')}: {st.get('replicas')}")
        started.stop_all()
    out["summary"] = {w.key: summarize(out["results"][w.key]) for w in workloads}
    out["conclusion"] = {wk: verdict(s) for wk, s in out["summary"].items()}
    out["loadavg_at_end"] = method.host_load()
    out["elapsed_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print(markdown(json.load(f)))
        return
    out = engine.run_stopping(run, args)
    for wk, per in out["results"].items():
        print_table(f"{out['titles'][wk]}: medians of {out['repeats']} interleaved runs", per)
        v = out["validity"].get(wk, {})
        if not v.get("valid", True):
            print("INVALID (nbdkit out of band): " + "; ".join(v["reasons"]))
        for s in out["conclusion"][wk]:
            print("  " + s)
    print(
        f"\nload {out['loadavg_at_start']} at start, {out['loadavg_at_end']} at end; "
        f"{out['elapsed_s']:.0f} s; median load1 over runs "
        f"{statistics.median(r['load1'] for per in out['results'].values() for x in per.values() for r in x['runs']):.1f}"
    )
    if args.json:
        method.save_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
