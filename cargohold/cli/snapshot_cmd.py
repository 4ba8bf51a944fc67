"""``cargohold snapshot ...``: a volume's snapshots, taken, deleted and reverted to through
the manager. Each change is an operation on the volume's engine; the command waits for it.

    cargohold snapshot create data before-upgrade --label app=db
    cargohold snapshot list data -o yaml
    cargohold volume detach data && cargohold snapshot revert data before-upgrade
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    age,
    handle_errors,
    human_size,
    operation_progress,
    progress,
    render,
    say,
    styled,
    table,
    tags,
)
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

snapshot_app = typer.Typer(help="Take, list, delete and revert to volume snapshots.")
app.add_typer(snapshot_app, name="snapshot", no_args_is_help=True)

WAIT = typer.Option(True, "--wait/--no-wait", help="wait for the operation")


def parse_labels(values: list[str] | None) -> dict[str, str]:
    """['app=db', 'tier=gold'] -> {'app': 'db', 'tier': 'gold'}."""
    labels: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def print_snapshots(snaps: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(s["name"]),
            styled(s.get("state")),
            human_size(s.get("size_bytes")),
            escape(age(s.get("created_at"))),
            escape(tags(s.get("labels"))),
            escape(s.get("error") or ""),
        )
        for s in sorted(snaps, key=lambda s: (s.get("created_at") or 0.0, s["name"]))
    ]
    table(("NAME", "STATE", "SIZE", "CREATED", "LABELS", "ERROR"), rows)


def _run(c: ManagerClient, op: dict[str, Any], wait: bool, label: str, timeout: float) -> Any:
    if not wait:
        return op
    with progress(label) as update:
        return c.wait_operation(op["id"], timeout, operation_progress(update))


@snapshot_app.command("create")
@handle_errors
def create(
    volume: str,
    name: str,
    label: list[str] | None = typer.Option(None, "--label", help="KEY=VALUE (repeatable)"),
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Take a snapshot of a volume (-o json prints the operation)."""
    labels = parse_labels(label)
    with ManagerClient.discover(api, dir) as c:
        op = c.create_snapshot(volume, name, labels)
        op = _run(c, op, wait, f"snapshot {name} of {volume}", timeout)
    msg = "created" if wait else f"being created (operation {op['id']})"
    render(
        op, output, lambda o: say(f"snapshot [bold]{escape(name)}[/bold] of {escape(volume)} {msg}")
    )


@snapshot_app.command("list")
@handle_errors
def list_(
    volume: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """List a volume's snapshots, oldest first."""
    with ManagerClient.discover(api, dir) as c:
        render(c.snapshots(volume), output, print_snapshots)


@snapshot_app.command("delete")
@handle_errors
def delete(
    volume: str,
    name: str,
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Delete a snapshot (its blocks merge into the next layer)."""
    with ManagerClient.discover(api, dir) as c:
        op = c.delete_snapshot(volume, name)
        op = _run(c, op, wait, f"deleting snapshot {name} of {volume}", timeout)
    msg = "deleted" if wait else f"being deleted (operation {op['id']})"
    render(
        op, output, lambda o: say(f"snapshot [bold]{escape(name)}[/bold] of {escape(volume)} {msg}")
    )


@snapshot_app.command("revert")
@handle_errors
def revert(
    volume: str,
    name: str,
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Revert a detached volume to a snapshot (newer data is lost)."""
    with ManagerClient.discover(api, dir) as c:
        op = c.revert(volume, name)
        op = _run(c, op, wait, f"reverting {volume} to {name}", timeout)
    msg = "reverted to" if wait else f"being reverted (operation {op['id']}) to"
    render(
        op,
        output,
        lambda o: say(f"volume [bold]{escape(volume)}[/bold] {msg} snapshot {escape(name)}"),
    )
