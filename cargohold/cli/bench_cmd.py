"""``cargohold bench VOLUME``: a built-in benchmark of a volume (as ``rbd bench`` or Longhorn's
kbench). fio's nbd engine (libnbd) talks to the volume's engine at its NBD endpoint:

    cargohold bench data --yes                      # the standard profile: 6 x (2 + 20) s
    cargohold bench data --yes --profile quick      # 6 x (0.5 + 2) s
    cargohold bench data --yes -o json

Workloads, in this order: 1 MiB sequential write QD4 (it also fills the region the reads
read), 4 KiB random write QD1 and QD16, 4 KiB random read QD1 and QD16, 1 MiB sequential read
QD4. Each reports IOPS, MB/s and total latency (mean, p50, p99, p99.9).

The benchmark WRITES over the volume's data: ``--yes`` says that is fine (without it the
command asks, or refuses when stdin is not a terminal). A volume that is not attached is
attached for the run (``--attach-node``, default as ``volume attach``) and detached after;
an attached volume stays where it is. fio must reach the endpoint: with a local cluster
started with ``--netns`` the endpoints live inside the namespaces, so run fio there.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cargohold.cli import fio
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
from cargohold.cli.volume_cmd import default_node
from cargohold.control.client import ManagerClient, volume_attached


class ProfileName(StrEnum):
    STANDARD = "standard"
    QUICK = "quick"


class BenchFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def print_results(report: dict[str, Any]) -> None:
    rows = [
        (
            r["title"],
            f"{r['ops_per_s']:,.0f}",
            f"{r['mb_per_s']:,.1f}",
            f"{r['lat_mean_us']:,.0f}",
            f"{r['lat_p50_us']:,.0f}",
            f"{r['lat_p99_us']:,.0f}",
            f"{r['lat_p999_us']:,.0f}",
        )
        for r in report["results"]
    ]
    title = (
        f"{report['volume']} at {report['endpoint']}: profile {report['profile']}, "
        f"{report['seconds']:g} s per workload"
    )
    t = Table(title=escape(title), title_justify="left", header_style="bold")
    t.add_column("WORKLOAD")
    for col in ("IOPS", "MB/S", "MEAN µS", "P50 µS", "P99 µS", "P99.9 µS"):
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    console.print(t)


def run_profile(endpoint: str, size: int | None, prof: fio.Profile) -> list[dict[str, Any]]:
    """Every workload in turn against ``endpoint``, with a progress bar over the whole run."""
    per = prof.seconds + prof.ramp
    total = per * len(fio.WORKLOADS)
    results = []
    with progress(f"fio against {endpoint}") as update:
        for i, w in enumerate(fio.WORKLOADS):
            done_before = i * per

            def tick(elapsed: float, w: fio.Workload = w, before: float = done_before) -> None:
                update(min(before + elapsed, total) / total, w.title)

            tick(0.0)
            cmd = fio.fio_command(endpoint, w, prof.seconds, prof.ramp, size=size)
            row = fio.run(cmd, w.rw, expected=per, on_tick=tick)
            results.append({"workload": w.key, "title": w.title, **row})
    return results


@app.command("bench")
@handle_errors
def bench(
    volume: str = typer.Argument(..., metavar="TARGET", help=TARGET_HELP),
    profile: ProfileName = typer.Option(
        ProfileName.STANDARD, "--profile", help="standard (20 s per workload) or quick (2 s)"
    ),
    seconds: float | None = typer.Option(
        None, "--seconds", min=0.1, help="measured seconds per workload (profile's default)"
    ),
    attach_node: str | None = typer.Option(
        None, "--attach-node", help="where to attach a detached volume (default as volume attach)"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="the benchmark overwrites data: go on"),
    timeout: float = TIMEOUT,
    output: BenchFormat = typer.Option(BenchFormat.TABLE, "--output", "-o", help="table or json"),
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Benchmark a volume with fio's nbd engine (OVERWRITES its data): IOPS, MB/s, latency."""
    prof = fio.PROFILES[profile.value]
    if seconds is not None:
        prof = fio.Profile(prof.name, seconds, prof.ramp)
    confirm_overwrite("the benchmark", volume if is_uri(volume) else f"volume {volume}", yes)
    version = fio.check_fio()
    vol: dict[str, Any] = {}
    we_attached = False
    if is_uri(volume):  # any NBD server: no manager, nothing to attach
        endpoint = volume
        results = run_profile(endpoint, None, prof)
    else:
        with ManagerClient.discover(api, dir) as c:
            vol = c.volume(volume)
            if not volume_attached(vol):
                node = attach_node or default_node(c, vol)
                c.attach(volume, node)
                we_attached = True
                with progress(f"attaching {volume} to {node}") as update:
                    vol = c.wait_attached(volume, node, timeout, lambda v: update(None, v["state"]))
            try:
                endpoint = str(vol["endpoint"])
                results = run_profile(endpoint, int(vol.get("size_bytes") or 0) or None, prof)
            finally:
                if we_attached:
                    c.detach(volume)
                    with progress(f"detaching {volume}") as update:
                        c.wait_detached(volume, timeout, lambda v: update(None, v["state"]))
    report = {
        "volume": volume,
        "endpoint": endpoint,
        "node": vol.get("attached_node"),
        "replicas": vol.get("replicas_wanted"),
        "size_bytes": vol.get("size_bytes"),
        "profile": prof.name,
        "seconds": prof.seconds,
        "ramp": prof.ramp,
        "fio": version,
        "attached_for_the_run": we_attached,
        "results": results,
    }
    if output is BenchFormat.JSON:
        typer.echo(json.dumps(report, indent=2))
        return
    print_results(report)
    if we_attached:
        say(f"volume [bold]{escape(volume)}[/bold] was attached for the run and detached again")
