#!/usr/bin/env python3
"""The whole benchmark suite of issue 6, in one command, on this machine:

    engine         benchmarks/engine.py's systems (local file, nbdkit, qemu-nbd, nbd-serve,
                   engine with 1 and 3 replicas started directly) plus ``cluster-3``: a
                   3-replica volume of a 3-node local cluster (manager + agents), attached
                   through the manager, fio's nbd engine against its endpoint. The workloads
                   are interleaved: for each workload every system runs in turn.
    control        benchmarks/control_plane.py: provisioning latencies and idle cost
    rebuild        benchmarks/rebuild.py: full and delta rebuild

Each part writes its JSON in benchmarks/results/ (``suite-engine.json``,
``control_plane.json``, ``rebuild.json``); then the suite merges them into
``benchmarks/results/suite.json``, draws ``benchmarks/results/engine.png`` (bars per
workload, one colour per system: IOPS as a ratio to nbdkit's, and absolute IOPS), prints a
markdown section and writes it into docs/benchmarks.md between ``<!-- suite:begin -->`` and
``<!-- suite:end -->``.

    .venv/bin/python benchmarks/suite.py                   # everything: about 25 min
    .venv/bin/python benchmarks/suite.py --seconds 10 --parts engine
    .venv/bin/python benchmarks/suite.py --parts none      # merge + chart + docs from saved JSON
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import control_plane  # noqa: E402
import engine as engine_bench  # noqa: E402
import rebuild  # noqa: E402

from cargohold.control.client import ManagerClient  # noqa: E402
from cargohold.launcher.cluster import LocalCluster  # noqa: E402

RESULTS = os.path.join(HERE, "results")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
PARTS = ("engine", "control", "rebuild")
FILES = {
    "engine": "suite-engine.json",
    "control": "control_plane.json",
    "rebuild": "rebuild.json",
}


# --- the cluster system for engine.py ---------------------------------------------------------
class ClusterRun:
    """A local cluster started for the engine benchmark; stopped (down --purge) by stop()."""

    def __init__(self, cl: LocalCluster) -> None:
        self.cl = cl
        self.proc = True  # engine.System counts the CPU of objects with a ``proc``

    def stop(self) -> None:
        self.cl.down(purge=True)

    def __repr__(self) -> str:
        return f"cluster({self.cl.dir})"


class AgentProc:
    """A node agent as engine.py sees a process: its CPU includes its children (replica
    server, engines)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = True


class SuiteBench(engine_bench.Bench):
    def _start_cluster_3(self) -> engine_bench.System:
        d = os.path.join(self.work, "cl")
        cl = LocalCluster.create(d, nodes=3)
        self.started.add(ClusterRun(cl))
        cl.up(timeout=120)
        with ManagerClient.discover(dir=d, poll_interval=0.05) as c:
            c.create_volume("bench", self.size, replicas=3)
            c.wait_volume("bench", lambda v: v.get("state") != "creating", 120)
            node = sorted(cl.nodes)[0]
            c.attach("bench", node)
            v = c.wait_attached("bench", node, 120, healthy=True)
        procs = [AgentProc(n.pid) for n in cl.nodes.values() if n.pid]
        control = os.path.join(cl.nodes[node].dir, "run", "bench.sock")
        return engine_bench.System("cluster-3", uri=v["endpoint"], procs=procs, control=control)


def install_cluster_system() -> None:
    if "cluster-3" not in engine_bench.SYSTEMS:
        engine_bench.SYSTEMS.append("cluster-3")
    engine_bench.LABELS["cluster-3"] = "cargohold volume, 3-node cluster, 3 replicas"
    engine_bench.TARGETS[("randwrite-4k-qd16", "cluster-3")] = (0.30, "min")
    engine_bench.TARGETS[("randread-4k-qd16", "cluster-3")] = (0.50, "min")
    engine_bench.TARGETS[("seqwrite-1m-qd4", "cluster-3")] = (0.25, "min")
    engine_bench.TARGETS[("seqread-1m-qd4", "cluster-3")] = (0.50, "min")
    engine_bench.TARGETS[("randwrite-4k-qd1", "cluster-3")] = (5.0, "max")
    engine_bench.Bench = SuiteBench  # type: ignore[misc]


def run_engine(args: argparse.Namespace) -> dict[str, Any]:
    install_cluster_system()
    ns = argparse.Namespace(
        seconds=args.seconds,
        ramp=args.ramp,
        size=args.size,
        dir=None,
        json=None,
        systems=args.systems,
        workloads=None,
        transport="tcp",
        local_link="unix",  # the engines' local replica as the agent runs it
        fsync=0,
        repeats=args.repeats,
        profile=None,
        profiler="cprofile",
        markdown=False,
    )
    started = engine_bench.Started()
    try:
        return engine_bench.run(ns, started)
    finally:
        started.stop_all()


# --- machine ------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024

    def version(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fio": version(["fio", "--version"]),
        "nbdkit": version(["nbdkit", "--version"]),
        "qemu_nbd": version(["qemu-nbd", "--version"]),
        "loadavg": list(os.getloadavg()),
    }


def _verdict(t: dict[str, Any]) -> str:
    if not t.get("valid", True):
        return "INVALID (baseline out of band)"
    return "met" if t["met"] else "missed"


def _method_lines(eng: dict[str, Any], titles: dict[str, str]) -> list[str]:
    """Issue #22's method under the table: repeats, the baselines' band, Ceph's anchor,
    CPU per write."""
    out = [""]
    n = eng.get("repeats", 1)
    out.append(
        f"Medians of {n} interleaved run(s) per workload and system, writeback settled "
        f"(`sync`, Dirty near 0) before each; load average {eng.get('loadavg_at_start')} at "
        f"the start, {eng.get('loadavg_at_end')} at the end."
    )
    for wk, v in eng.get("validity", {}).items():
        if not v["valid"]:
            out.append(
                f"**INVALID: {titles.get(wk, wk)}**, baselines out of band: "
                + "; ".join(v["reasons"])
            )
    anchor = eng.get("ceph_anchor")
    per = eng["results"].get(anchor["workload"], {}) if anchor else {}
    if per:
        ratios = ", ".join(
            f"{k} {r['ops_vs_ceph']:.1f}x ({r.get('cpu_us_per_op', 0):,.0f} µs CPU per write)"
            for k, r in per.items()
            if "ops_vs_ceph" in r
        )
        out.append(
            f"Against Ceph RBD's recorded {anchor['iops']:,.0f} IOPS (3 replicas, "
            f"{titles.get(anchor['workload'], anchor['workload'])}, this machine kind): {ratios}."
        )
    return out


# --- the chart ----------------------------------------------------------------------------------
COLOURS = {
    "local": "#7f7f7f",
    "nbdkit": "#1f77b4",
    "qemu-nbd": "#17becf",
    "nbd-serve": "#bcbd22",
    "engine-1": "#ff7f0e",
    "engine-3": "#d62728",
    "cluster-3": "#9467bd",
}


def chart(engine: dict[str, Any], path: str, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = engine["results"]
    workloads = list(results)
    titles = {w.key: w.title for w in engine_bench.WORKLOADS}
    systems: list[str] = []
    for per in results.values():
        systems += [s for s in per if s not in systems]
    n = len(systems)
    width = 0.8 / max(n, 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 9), sharex=True)
    xs = range(len(workloads))
    for i, s in enumerate(systems):
        off = [x - 0.4 + width * (i + 0.5) for x in xs]
        ratio = [results[w].get(s, {}).get("ops_vs_nbdkit", 0) for w in workloads]
        iops = [results[w].get(s, {}).get("ops_per_s", 0) for w in workloads]
        colour = COLOURS.get(s)
        top.bar(off, ratio, width, label=engine_bench.LABELS.get(s, s), color=colour)
        bottom.bar(off, iops, width, color=colour)
    top.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    top.set_ylabel("IOPS / nbdkit (same run)")
    top.set_title(f"fio nbd engine, ratios to nbdkit's file plugin\n{subtitle}", fontsize=10)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.grid(axis="y", alpha=0.3)
    bottom.set_yscale("log")
    bottom.set_ylabel("IOPS (log)")
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xticks(list(xs))
    bottom.set_xticklabels([titles.get(w, w) for w in workloads], rotation=15, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- markdown -------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def markdown(suite: dict[str, Any]) -> str:
    m = suite["machine"]
    parts = []
    for name, label in (
        ("engine", "data path"),
        ("control", "control plane"),
        ("rebuild", "rebuild"),
    ):
        part = suite.get(name)
        if part:
            load = part.get("loadavg_at_start") or [0.0]
            parts.append(
                f"{label} on {part.get('code', 'an unrecorded commit')}, finished "
                f"{part.get('finished_at', '?')} (load average {load[0]:.1f} at its start)"
            )
    lines = [
        "Measured: " + "; ".join(parts) + ".",
        "",
        f"Machine: {m['nproc']} vCPU ({m['cpu_model']}), {m['mem_gib']} GiB RAM, kernel "
        f"{m['kernel']}, Python {m['python']}, {m['fio']}, {m['nbdkit']}, {m['qemu_nbd']}.",
    ]
    eng = suite.get("engine")
    if eng:
        host = sorted(
            r.get("host_cpu_pct", 0) for per in eng["results"].values() for r in per.values()
        )
        if host:
            lines.append(
                f"The whole host's CPU during the fio runs was {host[len(host) // 2]:.0f}% "
                "(median; 200% = both cores busy): fio, the system under test and anything "
                "else running share two cores, so absolute figures move between runs; compare "
                "within one workload only."
            )
    eng = suite.get("engine")
    if eng:
        titles = {w.key: w.title for w in engine_bench.WORKLOADS}
        lines += [
            "",
            f"### Data path: fio's nbd engine, {eng['seconds']:g} s per run after a "
            f"{eng['ramp']:g} s ramp, {eng['size'] / 2**30:g} GiB targets",
            "",
            "![IOPS per workload and system, ratio to nbdkit](../benchmarks/results/engine.png)",
            "",
            "| workload | system | IOPS | MB/s | mean µs | p50 µs | p99 µs | p99.9 µs "
            "| IOPS / nbdkit | p99 / nbdkit |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for wk, per in eng["results"].items():
            for sk, r in per.items():
                lines.append(
                    f"| {titles.get(wk, wk)} | {sk} | {r['ops_per_s']:,.0f} | "
                    f"{r['mb_per_s']:,.0f} | {r['lat_mean_us']:,.0f} | {r['lat_p50_us']:,.0f} | "
                    f"{r['lat_p99_us']:,.0f} | {r['lat_p999_us']:,.0f} | "
                    f"{_f(r.get('ops_vs_nbdkit'), '.2f')} | {_f(r.get('p99_vs_nbdkit'), '.2f')} |"
                )
        lines += _method_lines(eng, titles)
        if eng.get("targets"):
            lines += [
                "",
                "| target (ratio to nbdkit) | system | got | bound | |",
                "|---|---|---:|---:|---|",
            ]
            for t in eng["targets"]:
                what = "p99" if t["how"] == "max" else "IOPS"
                what = "MB/s" if t["workload"].startswith("seq") else what
                op = "≤" if t["how"] == "max" else "≥"
                lines.append(
                    f"| {titles.get(t['workload'], t['workload'])} {what} | {t['system']} | "
                    f"{t['ratio']:.2f} | {op} {t['bound']:.2f} | "
                    f"{_verdict(t)} |"
                )
    cp = suite.get("control")
    if cp:
        lines += [
            "",
            f"### Control plane: {cp['volumes']} volumes, {cp['replicas']} replicas each, "
            f"{cp['nodes']}-node local cluster (SQLite)",
        ]
        if cp.get("provisioning"):
            lines += [
                "",
                "| operation | p50 s | p99 s | mean s | max s |",
                "|---|---:|---:|---:|---:|",
            ]
            for op in control_plane.OPS:
                s = cp["provisioning"][op]
                lines.append(
                    f"| {op} | {s['p50_s']:.3f} | {s['p99_s']:.3f} | {s['mean_s']:.3f} | "
                    f"{s['max_s']:.3f} |"
                )
        idle = cp.get("idle")
        if idle:
            e = idle["engine_rss_mib"]
            kinds = ", ".join(f"{k} {v:.1f}%" for k, v in idle["cpu_pct_by_kind"].items())
            lines += [
                "",
                f"Idle cost of {e['n']} attached idle volumes over {idle['seconds']:.0f} s: "
                f"**{idle['cpu_pct_of_one_core']:.1f}% of one core** in total ({kinds}); "
                f"RSS per engine mean **{e['mean']:.1f} MiB**, max {e['max']:.1f} MiB.",
            ]
    rb = suite.get("rebuild")
    if rb:
        lines += ["", "### Rebuild (4-node local cluster, 2-replica volumes)", ""]
        f = rb.get("full")
        if f:
            lines.append(
                f"- Full rebuild of a {f['volume_size'] / 2**30:g} GiB volume with "
                f"{f['written_bytes'] / 2**30:g} GiB written: the engine copied "
                f"{(f['engine_copied_bytes'] or 0) / 2**30:.2f} GiB in "
                f"{f['engine_rebuild_s']:.1f} s, **{f['mb_per_s']:.0f} MB/s** (as the manager "
                f"saw it, first appearance to `running`: {f['manager_observed_s']:.1f} s, "
                f"{f['mb_per_s_manager_observed']:.0f} MB/s); the replacement was placed "
                f"{f['kill_to_new_replica_s']:.1f} s after the node was killed "
                "(stale replica timeout 2 s)."
            )
        d = rb.get("delta")
        if d:
            lines.append(
                f"- Delta rebuild after {d['changed_pct']:.2f}% of the 4 KiB blocks changed "
                f"while the replica's node was down: the engine copied "
                f"{d['engine_copied_bytes'] / 2**20:.1f} MiB = **{d['copied_pct_of_volume']:.2f}% "
                f"of the volume** ({d['copied_vs_changed']:.2f}x the changed bytes) in "
                f"{d['engine_rebuild_s'] or 0:.2f} s; the volume was healthy "
                f"{d['node_start_to_healthy_s']:.1f} s after the node was started (agent start, "
                "heartbeat, re-add included)."
            )
    targets = suite.get("targets", [])
    if targets:
        lines += [
            "",
            "### The suite's other targets",
            "",
            "| target | got | bound | |",
            "|---|---:|---|---|",
        ]
        for t in targets:
            lines.append(
                f"| {t['what']} | {t['got']:.2f} | {t['target']} | {'met' if t['met'] else 'missed'} |"
            )
    return "\n".join(lines)


def write_doc(section: str, path: str = DOC) -> None:
    with open(path) as f:
        text = f.read()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(
            re.escape(BEGIN) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S
        )
    else:
        text = text.rstrip("\n") + f"\n\n## The whole suite\n\n{block}\n"
    with open(path, "w") as f:
        f.write(text)


# --- main ---------------------------------------------------------------------------------------
def load(name: str) -> dict[str, Any] | None:
    path = os.path.join(RESULTS, FILES[name])
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if "finished_at" not in data:  # written by the part's own script: its file's time
        stamp = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.UTC)
        data["finished_at"] = stamp.strftime("%Y-%m-%d %H:%M UTC")
    return data


def code_version() -> str:
    """The commit measured, and whether the working tree differed from it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "cargohold"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "an unknown commit"
    return f"commit {rev}" + (" with uncommitted changes to cargohold/" if dirty else "")


def save(name: str, data: dict[str, Any]) -> None:
    data["finished_at"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    data["code"] = code_version()
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, FILES[name]), "w") as f:
        json.dump(data, f, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", default=",".join(PARTS), help="engine,control,rebuild or none")
    ap.add_argument("--seconds", type=float, default=20, help="engine: seconds per run (20)")
    ap.add_argument("--ramp", type=float, default=2, help="engine: ramp seconds (2)")
    ap.add_argument("--size", default="2GiB", help="engine: target size (2GiB)")
    ap.add_argument("--systems", default=None, help="engine: subset of systems")
    ap.add_argument(
        "--repeats", type=int, default=3, help="engine: interleaved runs per workload (3)"
    )
    ap.add_argument("--volumes", type=int, default=100, help="control: volumes (100)")
    ap.add_argument("--idle-seconds", type=float, default=60, help="control: idle window (60)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args()
    parts = [] if args.parts == "none" else [p.strip() for p in args.parts.split(",")]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"unknown parts {bad}; known: {PARTS} or none")

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    t0 = time.perf_counter()
    if "control" in parts:
        ns = argparse.Namespace(
            volumes=args.volumes,
            idle_seconds=args.idle_seconds,
            settle=10.0,
            replicas=3,
            nodes=3,
            size="64MiB",
            timeout=120.0,
            dir=None,
            json=None,
        )
        out = control_plane.run(ns)
        control_plane.print_report(out)
        save("control", out)
    if "rebuild" in parts:
        ns = argparse.Namespace(
            size="4GiB",
            write="3GiB",
            change=1.0,
            stale=2.0,
            parts="full,delta",
            timeout=600.0,
            dir=None,
            json=None,
        )
        out = rebuild.run(ns)
        rebuild.print_report(out)
        save("rebuild", out)
    if "engine" in parts:
        out = run_engine(args)
        save("engine", out)
    suite: dict[str, Any] = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M UTC"),
        "command": "benchmarks/suite.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "ran_parts": parts,
        "elapsed_s": time.perf_counter() - t0,
    }
    targets: list[dict[str, Any]] = []
    for name in PARTS:
        data = load(name)
        if data is not None:
            suite[name] = data
            if name != "engine":
                targets += data.get("targets", [])
    suite["targets"] = targets
    with open(os.path.join(RESULTS, "suite.json"), "w") as f:
        json.dump(suite, f, indent=2)
    if suite.get("engine"):
        m = suite["machine"]
        sub = f"{m['nproc']} vCPU {m['cpu_model']}, kernel {m['kernel']}, {suite['date']}"
        chart(suite["engine"], os.path.join(RESULTS, "engine.png"), sub)
        print(f"wrote {os.path.join(RESULTS, 'engine.png')}")
    section = markdown(suite)
    print("\n" + section)
    if not args.no_doc:
        write_doc(section)
        print(f"\nwrote the suite section of {DOC}")
    print(f"wrote {os.path.join(RESULTS, 'suite.json')}")


if __name__ == "__main__":
    main()
