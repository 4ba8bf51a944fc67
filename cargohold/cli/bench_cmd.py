"""``cargohold bench``: a built-in benchmark (as ``rbd bench`` or Longhorn's kbench), measured
the way the benchmark suite measures (docs/benchmarks.md, "The method"): fio's nbd engine
(libnbd) drives the target at its NBD endpoint, and beside it, in the same run, the local
disk (a file, O_DIRECT) and nbdkit's file plugin (when installed), so the figures come as
ratios to baselines measured a minute apart:

    cargohold bench data --yes                      # a volume: 3 x 3 x 6 x (2 + 20) s
    cargohold bench data --yes --profile quick      # 3 x 3 x 6 x (0.5 + 2) s
    cargohold bench --local-engine --replicas 3     # a throwaway engine on this machine
    cargohold bench data -y --workloads randwrite-4k-qd16 --json

Workloads: 1 MiB sequential write QD4, 4 KiB random write QD1 and QD16, 4 KiB random read
QD1 and QD16, 1 MiB sequential read QD4. Every system is filled once first (the same file
state for all: reads of holes measure nothing), then for every workload every system runs
in turn, and the whole is repeated ``--repeats`` times (3) with the systems' order rotated;
``sync`` and a wait for the machine's dirty pages to drain come before every run. Reported
per workload: the medians of IOPS, MB/s and total latency (p50, p99), the spread of IOPS,
CPU µs per operation (all the target's processes: the local engine's, or a local cluster's
engine and replica servers), the ratios to the local file and to nbdkit, for 4 KiB random
write QD16 the ratio to Ceph RBD's recorded 1,380 IOPS (3 replicas), and the baselines'
verdict: in band, or INVALID (a baseline's runs spread more than ±15 %, or nbdkit below
half the local file: a stalled baseline makes every ratio a lie; the figures are printed
but are no result). ``--no-baselines`` measures the target alone.

The benchmark WRITES over the volume's data: ``--yes`` says that is fine (without it the
command asks, or refuses when stdin is not a terminal). A volume that is not attached is
attached for the run (``--attach-node``, default as ``volume attach``) and detached after;
an attached volume stays where it is. fio must reach the endpoint: with a local cluster
started with ``--netns`` the endpoints live inside the namespaces, so run fio there.
``--local-engine`` needs no cluster: it starts N replica servers on loopback and an engine
over them (mutual TLS, as users run it) in a temporary directory and stops them after.
Every process the command starts is stopped by its PID, on errors and Ctrl-C too.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from enum import StrEnum
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from cargohold.cli import bench_method, bench_report, bench_systems, fio
from cargohold.cli.bench_systems import Started, System
from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    TIMEOUT,
    console,
    handle_errors,
    progress,
    say,
)
from cargohold.cli.targets import TARGET_HELP, confirm_overwrite, is_uri
from cargohold.cli.units import parse_size
from cargohold.cli.volume_cmd import default_node
from cargohold.control.client import ManagerClient, volume_attached
from cargohold.errors import ConfigError

INVALID_EXIT = 9  # a baseline was out of band: the run is no result (docs/benchmarks.md)

DEFAULT_REGION = 1 << 30  # a volume's first GiB (or all of it, if smaller)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


class ProfileName(StrEnum):
    STANDARD = "standard"
    QUICK = "quick"


class BenchFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def _x(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else ""


def print_results(report: dict[str, Any]) -> None:
    """One table: per workload the target's row, then its baselines'; the verdicts below."""
    labels = report["labels"]
    title = (
        f"{report['label']} at {report['endpoint']}: profile {report['profile']}, "
        f"{report['seconds']:g} s per run, medians of {report['repeats']} interleaved runs"
        + "".join(f"\n  {k}: {labels[k]}" for k in bench_report.SYSTEMS if k in labels)
    )
    t = Table(title=escape(title), title_justify="left", header_style="bold", box=box.SIMPLE)
    t.add_column("WORKLOAD")
    for col in ("IOPS", "±", "MB/S", "P99 µS", "CPU µS/OP", "/LOCAL", "/NBDKIT"):
        t.add_column(col, justify="right", no_wrap=True)
    titles = {w.key: w.title for w in fio.WORKLOADS}
    for wk, s in report["summary"].items():
        for key in bench_report.SYSTEMS:
            r = s["systems"].get(key)
            if r is None:
                continue
            target = key == "target"
            cpu = r.get("cpu_us_per_op")
            t.add_row(
                titles[wk] if target else f"  {key}",
                f"{r['ops_per_s']:,.0f}",
                f"{50 * r['ops_spread']['spread']:.0f}%",
                f"{r['mb_per_s']:,.1f}",
                f"{r['lat_p99_us']:,.0f}",
                f"{cpu:,.0f}" if cpu is not None else "",
                _x(s["ratios"]["vs_local"]) if target else "",
                _x(s["ratios"]["vs_nbdkit"]) if target else "",
                style=None if target else "dim",
                end_section=key == [k for k in bench_report.SYSTEMS if k in s["systems"]][-1],
            )
    console.print(t)
    for wk, s in report["summary"].items():
        v = s["verdict"]
        if v["valid"] is False:
            console.print(
                f"[bold red]INVALID[/] {escape(titles[wk])}: " + escape("; ".join(v["reasons"]))
            )
        ceph = s["ratios"]["vs_ceph"]
        if ceph is not None:
            console.print(
                f"{titles[wk]}: {ceph:.1f}x Ceph RBD's recorded "
                f"{bench_method.CEPH_ANCHOR['iops']:,.0f} IOPS (Ceph: 3 replicas; this target: "
                f"{report['replicas'] or '?'})"
            )
    verdict = report["valid"]
    if verdict is None:
        say("baselines: not measured (--no-baselines): figures without a check")
    elif verdict:
        say("baselines: in band (every workload)")
    else:
        say("[bold red]baselines out of band[/]: the ratios of the INVALID workloads are no result")


def pick_workloads(text: str | None) -> list[fio.Workload]:
    if not text:
        return list(fio.WORKLOADS)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    known = [w.key for w in fio.WORKLOADS]
    bad = [k for k in keys if k not in known]
    if bad:
        raise ConfigError(f"--workloads: unknown {', '.join(bad)} (known: {', '.join(known)})")
    return [w for w in fio.WORKLOADS if w.key in keys]


def fill(sys_: System, size: int) -> None:
    """Write the region once (1 MiB, QD8) and flush: every system starts from the same state."""
    w = fio.Workload("fill", "fill", "write", "1M", 8)
    cmd = sys_.command(w, 1.0, 0.0, size)
    cmd = [c for c in cmd if c != "--time_based" and not c.startswith("--runtime=")]
    fio.run([*cmd, "--end_fsync=1"], "write", expected=max(30.0, size / 20e6))
    bench_method.settle_writeback()


def measure(sys_: System, w: fio.Workload, prof: fio.Profile, size: int, tick: Any) -> dict:
    """One run: fio's row, with the CPU µs per operation of the system's processes."""
    bench_method.settle_writeback()  # nobody pays for the previous run's dirty pages
    load1 = bench_method.host_load()[0]
    cmd = sys_.command(w, prof.seconds, prof.ramp, size)
    before, t0 = bench_method.cpu_ticks(sys_.pids), time.monotonic()
    row = fio.run(cmd, w.rw, expected=prof.seconds + prof.ramp, on_tick=tick)
    after, t1 = bench_method.cpu_ticks(sys_.pids), time.monotonic()
    if sys_.pids:  # the ramp and fio's start are in the CPU: spread over the whole interval
        row["cpu_us_per_op"] = bench_method.cpu_us_per_op(
            before, after, row["ops_per_s"] * (t1 - t0)
        )
    row["load1"] = load1
    return row


def run_all(
    systems: list[System], workloads: list[fio.Workload], prof: fio.Profile, size: int, repeats: int
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every workload on every system in turn, ``repeats`` times, the order rotated."""
    per = prof.seconds + prof.ramp
    total = per * len(workloads) * len(systems) * repeats
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w.key: {} for w in workloads}
    done = 0.0
    with progress(f"fio: {len(systems)} systems, {repeats} repeats") as update:
        for rep in range(repeats):
            for w in workloads:
                for i in bench_report.order(len(systems), rep):
                    s = systems[i]
                    before = done

                    def tick(
                        el: float, b: float = before, what: str = f"{w.title}, {s.key}"
                    ) -> None:
                        update(min(b + el, total) / total, what)

                    tick(0.0)
                    runs[w.key].setdefault(s.key, []).append(measure(s, w, prof, size, tick))
                    done += per
    return runs


@app.command("bench")
@handle_errors
def bench(
    volume: str | None = typer.Argument(None, metavar="TARGET", help=TARGET_HELP),
    local_engine: bool = typer.Option(
        False, "--local-engine", help="no TARGET: start a throwaway engine here (TLS) and bench it"
    ),
    replicas: int = typer.Option(3, "--replicas", min=1, max=5, help="--local-engine's replicas"),
    profile: ProfileName = typer.Option(
        ProfileName.STANDARD, "--profile", help="standard (20 s per run) or quick (2 s)"
    ),
    seconds: float | None = typer.Option(
        None, "--seconds", min=0.1, help="measured seconds per run (profile's default)"
    ),
    repeats: int = typer.Option(3, "--repeats", min=1, help="interleaved runs: medians, spread"),
    baselines: bool = typer.Option(
        True, "--baselines/--no-baselines", help="measure the local file and nbdkit beside it"
    ),
    workloads: str | None = typer.Option(
        None, "--workloads", help="comma-separated subset, e.g. randwrite-4k-qd16"
    ),
    size: str | None = typer.Option(
        None, "--size", help="region measured (default: 1GiB, or the volume if smaller)"
    ),
    work_dir: str | None = typer.Option(
        None, "--work-dir", help="where the baselines' files (and --local-engine) live (a temp dir)"
    ),
    attach_node: str | None = typer.Option(
        None, "--attach-node", help="where to attach a detached volume (default as volume attach)"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="the benchmark overwrites data: go on"),
    timeout: float = TIMEOUT,
    output: BenchFormat = typer.Option(BenchFormat.TABLE, "--output", "-o", help="table or json"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON (as -o json)"),
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Benchmark a volume (OVERWRITES its data) beside the local disk and nbdkit: medians."""
    if (volume is None) == (not local_engine):
        raise ConfigError("give a TARGET (a volume or an NBD URI) or --local-engine, not both")
    prof = fio.PROFILES[profile.value]
    if seconds is not None:
        prof = fio.Profile(prof.name, seconds, prof.ramp)
    chosen = pick_workloads(workloads)
    region = parse_size(size, "--size") if size else None
    if volume is not None:
        confirm_overwrite("the benchmark", volume if is_uri(volume) else f"volume {volume}", yes)
    version = fio.check_fio()
    started = Started()
    # SIGTERM, SIGHUP and SIGINT (a background job's SIGINT is ignored unless we ask) end
    # the run through the cleanup below: every process started is stopped by its PID
    previous = {sig: signal.signal(sig, _interrupted) for sig in STOP_SIGNALS}
    vol: dict[str, Any] = {}
    we_attached = False
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cargohold-bench-", dir=work_dir) as work:
        try:
            if volume is None:
                region = region or DEFAULT_REGION
                target = bench_systems.start_local_engine(
                    os.path.join(work, "engine"), replicas, region, started
                )
                runs, systems = _measure(
                    target, work, region, chosen, prof, repeats, baselines, started, notes
                )
                st = bench_systems.control_request(str(target.control), {"op": "status"})
                if st.get("robustness") != "healthy":  # a dropped replica makes figures a lie
                    notes.append(f"the local engine ended {st.get('robustness')}")
            elif is_uri(volume):  # any NBD server: no manager, nothing to attach
                region = region or DEFAULT_REGION
                target = System("target", volume, uri=volume)
                runs, systems = _measure(
                    target, work, region, chosen, prof, repeats, baselines, started, notes
                )
            else:
                with ManagerClient.discover(api, dir) as c:
                    vol = c.volume(volume)
                    vsize = int(vol.get("size_bytes") or 0) or DEFAULT_REGION
                    region = min(region or DEFAULT_REGION, vsize)
                    if not volume_attached(vol):
                        node = attach_node or default_node(c, vol)
                        c.attach(volume, node)
                        we_attached = True
                        with progress(f"attaching {volume} to {node}") as update:
                            vol = c.wait_attached(
                                volume, node, timeout, lambda v: update(None, v["state"])
                            )
                    try:
                        pids = bench_systems.cluster_pids(_cluster_dir(dir), volume)
                        if not pids:
                            notes.append("CPU per operation: the volume's processes are not here")
                        target = System(
                            "target", f"volume {volume}", uri=str(vol["endpoint"]), pids=pids
                        )
                        runs, systems = _measure(
                            target, work, region, chosen, prof, repeats, baselines, started, notes
                        )
                    finally:
                        if we_attached:
                            c.detach(volume)
                            with progress(f"detaching {volume}") as update:
                                c.wait_detached(volume, timeout, lambda v: update(None, v["state"]))
        finally:
            for sig in STOP_SIGNALS:  # a second signal must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
            started.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    summary = bench_report.summarize(runs)
    results = []
    for w in chosen:  # the target's medians, one row per workload
        r = summary[w.key]["systems"]["target"]
        results.append({"workload": w.key, "title": w.title, **r, "ios": _ios(runs[w.key])})
    report = {
        "volume": volume,
        "label": target.label,
        "endpoint": target.uri,
        "node": vol.get("attached_node"),
        "replicas": vol.get("replicas_wanted") if vol else (replicas if local_engine else None),
        "size_bytes": vol.get("size_bytes"),
        "region_bytes": region,
        "profile": prof.name,
        "seconds": prof.seconds,
        "ramp": prof.ramp,
        "repeats": repeats,
        "fio": version,
        "attached_for_the_run": we_attached,
        "labels": {s.key: s.label for s in systems},
        "load1_at_end": bench_method.host_load()[0],
        "valid": bench_report.all_valid(summary),
        "ceph_anchor": bench_method.CEPH_ANCHOR,
        "notes": notes,
        "results": results,
        "summary": summary,
    }
    if as_json or output is BenchFormat.JSON:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_results(report)
        for n in notes:
            say(f"note: {escape(n)}")
        if we_attached:
            say(
                f"volume [bold]{escape(str(volume))}[/bold] was attached for the run and "
                "detached again"
            )
    if report["valid"] is False:  # printed in full, but no script may take it as a result
        raise typer.Exit(INVALID_EXIT)


def _ios(rows: dict[str, list[dict[str, Any]]]) -> int:
    return int(sum(r.get("ios", 0) for r in rows.get("target", [])))


def _cluster_dir(dir: str | None) -> str:
    from cargohold.launcher.cluster import default_dir

    return dir or os.environ.get("CARGOHOLD_DIR") or default_dir()


def _measure(
    target: System,
    work: str,
    region: int,
    workloads: list[fio.Workload],
    prof: fio.Profile,
    repeats: int,
    baselines: bool,
    started: Started,
    notes: list[str],
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[System]]:
    """Start the baselines, fill every system, run everything; the runs and the systems."""
    systems = [target]
    if baselines:
        systems.append(bench_systems.local_file(work, region))
        why = bench_systems.nbdkit_available()
        if why:
            notes.append(f"no nbdkit baseline: {why}")
        else:
            systems.append(bench_systems.start_nbdkit(work, region, started))
    for s in systems:
        with progress(f"filling {s.label} ({region / 2**20:,.0f} MiB)") as update:
            update(None, "")
            fill(s, region)
    return run_all(systems, workloads, prof, region, repeats), systems
