"""``cargohold snapshot create-group | list-groups | delete-group``: snapshots of several
volumes at one crash-consistent point (docs/snapshots.md). The command waits until the
group is ready (or failed: then nothing of it is left).

    cargohold snapshot create-group nightly-db db-data db-wal
    cargohold snapshot list-groups
    cargohold snapshot delete-group nightly-db
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    age,
    handle_errors,
    render,
    say,
    styled,
    table,
)
from cargohold.cli.snapshot_cmd import WAIT, snapshot_app
from cargohold.control.client import ManagerClient


def print_groups(groups: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(g["name"]),
            styled(g.get("state")),
            escape(", ".join(g.get("volumes") or [])),
            escape(age(g.get("created_at"))),
            escape(g.get("error") or ""),
        )
        for g in sorted(groups, key=lambda g: (g.get("created_at") or 0.0, g["name"]))
    ]
    table(("NAME", "STATE", "VOLUMES", "CREATED", "ERROR"), rows)


@snapshot_app.command("create-group")
@handle_errors
def create_group(
    name: str,
    volumes: list[str] = typer.Argument(..., help="the volumes, two or more"),
    hold: float = typer.Option(
        30.0, "--hold", help="the longest each volume's writes stay held (s)"
    ),
    wait: bool = WAIT,
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Snapshot several volumes at one crash-consistent point: a snapshot NAME of each."""
    with ManagerClient.discover(api, dir) as c:
        g = c.create_group_snapshot(name, volumes, hold)
        if wait:
            g = c.wait_group_snapshot(name, timeout)
    msg = "created" if wait else "being created"
    render(
        g,
        output,
        lambda g: say(
            f"group snapshot [bold]{escape(name)}[/bold] of {escape(', '.join(g['volumes']))} {msg}"
        ),
    )


@snapshot_app.command("list-groups")
@handle_errors
def list_groups(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List the group snapshots, oldest first."""
    with ManagerClient.discover(api, dir) as c:
        render(c.group_snapshots(), output, print_groups)


@snapshot_app.command("delete-group")
@handle_errors
def delete_group(
    name: str,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Delete a group snapshot and its member snapshots (in the background)."""
    with ManagerClient.discover(api, dir) as c:
        g = c.delete_group_snapshot(name)
    render(g, output, lambda g: say(f"group snapshot [bold]{escape(name)}[/bold] being deleted"))
