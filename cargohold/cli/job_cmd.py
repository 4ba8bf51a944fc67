"""``cargohold job ...``: recurring snapshot and backup jobs with retention (docs/jobs.md).

    cargohold job create hourly-snap --kind snapshot --cron "0 * * * *" --selector app=db \\
        --keep-last 24 --keep-daily 7
    cargohold job create nightly --kind backup --target s3-main --cron "30 2 * * *" \\
        --volume data --keep-within 30d --keep-monthly 12 --deadline 4h
    cargohold job list
    cargohold job get hourly-snap -o json      # with each volume's last run and next due
    cargohold job run-now hourly-snap
    cargohold job delete hourly-snap           # its snapshots and backups stay
"""

from __future__ import annotations

import re
import time
from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    Format,
    age,
    handle_errors,
    render,
    say,
    styled,
    table,
    tags,
)
from cargohold.cli.snapshot_cmd import parse_labels
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

job_app = typer.Typer(help="Recurring snapshot and backup jobs with retention.")
app.add_typer(job_app, name="job", no_args_is_help=True)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str, what: str, zero: bool = False) -> float:
    """'90', '30m', '36h', '7d', '2w' -> seconds (0 only with ``zero``)."""
    m = _DURATION.match(text)
    if not m or (float(m.group(1)) <= 0 and not zero):
        raise ConfigError(f"{what} {text!r} is not a duration: use e.g. 90s, 30m, 36h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _when(t: Any) -> str:
    if not t:
        return ""
    d = float(t) - time.time()
    if d <= 0:
        return "now"
    if d < 3600:
        return f"in {d / 60:.0f}m"
    if d < 86400:
        return f"in {d / 3600:.0f}h"
    return f"in {d / 86400:.0f}d"


def retention_text(r: dict[str, Any]) -> str:
    parts = []
    for key, short in (
        ("keep_last", "last"),
        ("keep_within", "within"),
        ("hourly", "hourly"),
        ("daily", "daily"),
        ("weekly", "weekly"),
        ("monthly", "monthly"),
        ("yearly", "yearly"),
    ):
        v = r.get(key)
        if v is None:
            continue
        parts.append(f"{short} {v / 86400:g}d" if key == "keep_within" else f"{short} {v}")
    return ", ".join(parts)


def _selects(j: dict[str, Any]) -> str:
    sel = j.get("selector") or {}
    parts = [*(sel.get("volumes") or [])]
    if sel.get("labels"):
        parts.append(tags(sel["labels"]))
    return ", ".join(parts) or "(by StorageClass label)"


def print_jobs(jobs: list[dict[str, Any]]) -> None:
    rows = []
    for j in sorted(jobs, key=lambda j: j["name"]):
        runs = j.get("runs") or []
        failed = sum(1 for r in runs if r.get("last_result") == "failed")
        due = min((r.get("next_due") or 0.0 for r in runs), default=0.0)
        rows.append(
            (
                escape(j["name"]),
                escape(j["kind"]),
                escape(j["cron"]),
                escape(j.get("target") or ""),
                escape(_selects(j)),
                escape(retention_text(j.get("retention") or {})),
                "yes" if j.get("enabled") else "no",
                f"{len(runs)}" + (f" ({failed} failed)" if failed else ""),
                escape(_when(due)),
            )
        )
    table(
        ("NAME", "KIND", "CRON", "TARGET", "SELECTS", "KEEPS", "ENABLED", "VOLUMES", "NEXT"), rows
    )


def print_job(j: dict[str, Any]) -> None:
    print_jobs([j])
    rows = [
        (
            escape(r["volume"]),
            styled(r.get("last_result") or "never"),
            escape(age(r.get("last_started"))),
            escape(_when(r.get("next_due"))),
            f"{r.get('runs', 0)}/{r.get('failures', 0)}",
            escape(r.get("waiting") or r.get("last_error") or ""),
        )
        for r in j.get("runs") or []
    ]
    table(("VOLUME", "LAST", "STARTED", "NEXT", "RUNS/FAILED", "NOTE"), rows, title="runs")


@job_app.command("create")
@handle_errors
def create(
    name: str,
    kind: str = typer.Option(..., "--kind", help="snapshot or backup"),
    cron: str = typer.Option(..., "--cron", help='five fields, UTC, e.g. "0 * * * *"'),
    target: str | None = typer.Option(None, "--target", help="backups: the backup target"),
    volume: list[str] | None = typer.Option(None, "--volume", help="a volume (repeatable)"),
    selector: list[str] | None = typer.Option(
        None, "--selector", help="KEY=VALUE: volumes with this label (repeatable: all of them)"
    ),
    keep_last: int | None = typer.Option(None, "--keep-last", help="keep the N newest"),
    keep_within: str | None = typer.Option(
        None, "--keep-within", help="keep all made within this of the newest (e.g. 7d)"
    ),
    keep_hourly: int | None = typer.Option(None, "--keep-hourly"),
    keep_daily: int | None = typer.Option(None, "--keep-daily"),
    keep_weekly: int | None = typer.Option(None, "--keep-weekly"),
    keep_monthly: int | None = typer.Option(None, "--keep-monthly"),
    keep_yearly: int | None = typer.Option(None, "--keep-yearly"),
    deadline: str = typer.Option("1h", "--deadline", help="a run failed past this (e.g. 30m)"),
    max_per_node: int = typer.Option(2, "--max-per-node", help="runs at once on one node"),
    max_per_target: int = typer.Option(4, "--max-per-target", help="backups at once to a target"),
    max_jitter: str = typer.Option("60s", "--max-jitter", help="spread volumes' starts by this"),
    disabled: bool = typer.Option(False, "--disabled", help="create it paused (run-now works)"),
    tenant: str | None = typer.Option(None, "--tenant", help="the admin: a tenant's job"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Create a recurring snapshot or backup job."""
    retention = {
        "keep_last": keep_last,
        "keep_within": parse_duration(keep_within, "--keep-within") if keep_within else None,
        "hourly": keep_hourly,
        "daily": keep_daily,
        "weekly": keep_weekly,
        "monthly": keep_monthly,
        "yearly": keep_yearly,
    }
    spec: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "cron": cron,
        "retention": {k: v for k, v in retention.items() if v is not None},
        "target": target,
        "selector": {"volumes": list(volume or []), "labels": parse_labels(selector)},
        "deadline": parse_duration(deadline, "--deadline"),
        "max_per_node": max_per_node,
        "max_per_target": max_per_target,
        "max_jitter": parse_duration(max_jitter, "--max-jitter", zero=True),
        "enabled": not disabled,
        "tenant": tenant,
    }
    with ManagerClient.discover(api, dir) as c:
        j = c.create_job(spec)
    render(
        j,
        output,
        lambda j: say(
            f"job [bold]{escape(name)}[/bold] created: {escape(kind)} on {escape(cron)!r} "
            f"(UTC), keeps {escape(retention_text(j.get('retention') or {}))}"
        ),
    )


@job_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List recurring jobs."""
    with ManagerClient.discover(api, dir) as c:
        render(c.jobs(), output, print_jobs)


@job_app.command("get")
@handle_errors
def get(name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Show a job and, per volume, its last run and when it is due next."""
    with ManagerClient.discover(api, dir) as c:
        render(c.job(name), output, print_job)


@job_app.command("delete")
@handle_errors
def delete(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Delete a job (the snapshots and backups it made are kept)."""
    with ManagerClient.discover(api, dir) as c:
        j = c.delete_job(name)
    render(
        j,
        output,
        lambda j: say(f"job [bold]{escape(name)}[/bold] deleted; what it made is kept"),
    )


@job_app.command("run-now")
@handle_errors
def run_now(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Run a job once on every volume it selects, now (job get shows how it went)."""
    with ManagerClient.discover(api, dir) as c:
        j = c.run_job(name)
    render(j, output, lambda j: say(f"job [bold]{escape(name)}[/bold] runs now"))
