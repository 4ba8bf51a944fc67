"""``cargohold replica orphans``: replicas on nodes' disks that no record names (kept, and
reported; see docs/operations.md, "Cluster identity, orphans and the trash"), and
``cargohold events``: what the manager recorded happening.

    cargohold replica orphans
    cargohold replica orphans -o json
    cargohold replica orphans delete node-2 vol-a-r1a2b3c
    cargohold events
    cargohold events my-volume --follow
"""

from __future__ import annotations

import datetime as dt
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
    human_size,
    render,
    say,
    table,
)
from cargohold.cli.replica_cmd import replica_app
from cargohold.control.client import ManagerClient

orphans_app = typer.Typer(
    help="Replicas on disks that no record names: list them, delete one.",
    invoke_without_command=True,
)
replica_app.add_typer(orphans_app, name="orphans")


def print_orphans(items: list[dict[str, Any]]) -> None:
    if not items:
        say("no orphan replicas")
        return
    table(
        ("NODE", "REPLICA", "VOLUME", "SIZE", "GENERATION", "EPOCH", "CLUSTER", "FIRST SEEN"),
        [
            (
                escape(o.get("node", "")),
                escape(o.get("id", "")),
                escape(o.get("volume", "")),
                human_size(o.get("size_bytes")),
                str(o.get("generation", 0)),
                str(o.get("epoch", 0)),
                escape(o.get("cluster_id") or "-"),
                age(o.get("first_seen")),
            )
            for o in items
        ],
    )


@orphans_app.callback()
@handle_errors
def orphans(
    ctx: typer.Context,
    node: str | None = typer.Option(None, "--node", help="only this node's"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """List orphan replicas: on a node's disk, in no record, kept until deleted."""
    if ctx.invoked_subcommand is not None:
        return
    with ManagerClient.discover(api, dir) as c:
        render(c.orphans(node), output, print_orphans)


@orphans_app.command("delete")
@handle_errors
def delete(
    node: str,
    replica: str,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Delete an orphan replica: a tombstone, then its node moves it to the disk's trash
    (emptied after the agent's trash grace; until then it can be moved back)."""
    with ManagerClient.discover(api, dir) as c:
        gone = c.delete_orphan(node, replica)
    render(
        gone,
        output,
        lambda o: say(
            f"orphan replica {escape(o['id'])} on node {escape(o['node'])} deleted: its "
            "node moves it to the trash at its next heartbeat"
        ),
    )


def print_events(items: list[dict[str, Any]]) -> None:
    if not items:
        say("no events")
        return
    table(
        ("AGE", "KIND", "VOLUME", "NODE", "REPLICA", "MESSAGE"),
        [
            (
                age(e.get("at")),
                escape(e.get("kind", "")),
                escape(e.get("volume", "")),
                escape(e.get("node", "")),
                escape(e.get("replica", "")),
                escape(e.get("message", "")),
            )
            for e in items
        ],
    )


FOLLOW_EVERY = 1.0  # seconds between polls of --follow


def event_line(e: dict[str, Any]) -> str:
    """One event as a line of ``--follow``: time, kind, volume, node, replica, message."""
    at = dt.datetime.fromtimestamp(float(e.get("at") or 0.0), dt.UTC).strftime("%H:%M:%S")
    where = " ".join(str(e.get(k)) for k in ("volume", "node", "replica") if e.get(k))
    return f"{at} {e.get('kind', '')} {where}: {e.get('message', '')}"


@app.command("events")
@handle_errors
def events(
    volume: str = typer.Argument(None, help="only this volume's events"),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="keep printing new events as they come (Ctrl-C stops)"
    ),
    limit: int = typer.Option(None, min=1, max=10000, help="only the newest N events"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """The manager's event log, oldest first: volumes created, attached, detached and
    deleted, replicas failed, rebuilds started and finished, scrub finding rot, snapshots,
    backups done or failed, orphans, agents refusing (docs/observability.md). The newest
    200 per volume and 2000 in all are kept."""
    with ManagerClient.discover(api, dir) as c:
        got = c.events(volume=volume, limit=limit)
        if not follow:
            render(got, output, print_events)
            return
        shown: set[str] = set()
        since = None
        try:
            while True:
                for e in got:
                    if e.get("id") in shown:
                        continue
                    shown.add(str(e.get("id")))
                    since = max(since or 0.0, float(e.get("at") or 0.0))
                    print(event_line(e), flush=True)
                time.sleep(FOLLOW_EVERY)
                # events of the same instant as the last one shown come again: skipped by id
                got = c.events(volume=volume, since=since - 1e-3 if since else None)
        except KeyboardInterrupt:
            return
