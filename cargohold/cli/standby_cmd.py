"""``cargohold volume create-standby`` and ``cargohold volume activate``: disaster-recovery
standby volumes (docs/disaster-recovery.md).

    cargohold backup-target add site-a --url s3://dr-bucket/site-a ...   # A's target, B's key copy
    cargohold volume create-standby db-dr --from-target site-a --source-volume db
    cargohold volume get db-dr          # standby: state, applied backup, lag
    cargohold volume activate db-dr     # the source site is lost: make it writable
"""

from __future__ import annotations

import typer
from rich.markup import escape

from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    handle_errors,
    progress,
    render,
    say,
)
from cargohold.cli.units import parse_size
from cargohold.cli.volume_cmd import volume_app
from cargohold.control.client import ManagerClient


@volume_app.command("create-standby")
@handle_errors
def create_standby(
    name: str,
    from_target: str = typer.Option(..., "--from-target", help="the backup target to follow"),
    source_volume: str = typer.Option(..., "--source-volume", help="the source volume's name"),
    source_volume_id: str | None = typer.Option(
        None, "--source-volume-id", help="its uid (default: the one of its newest backup)"
    ),
    size: str | None = typer.Option(None, "--size", help="default: the backup's size"),
    replicas: int | None = typer.Option(None, "--replicas", min=1, max=16, help="default 3"),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="wait until the first backup is restored and sealed"
    ),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Create a standby volume NAME: it restores the newest backup of the source volume in
    the target, then applies each newer backup (only what changed) until it is activated."""
    with ManagerClient.discover(api, dir) as c:
        vol = c.create_standby(
            name,
            from_target,
            source_volume,
            source_volume_id=source_volume_id,
            size_bytes=parse_size(size) if size else None,
            replicas=replicas,
        )
        if wait:
            with progress(f"restoring {source_volume}'s newest backup into {name}") as update:
                vol = c.wait_volume(
                    name,
                    lambda v: (
                        bool((v.get("standby") or {}).get("applied")) or v.get("state") == "failed"
                    ),
                    timeout,
                    lambda v: update(None, str((v.get("standby") or {}).get("phase") or "")),
                )
    render(
        vol,
        output,
        lambda v: say(
            f"standby [bold]{escape(name)}[/bold] follows {escape(source_volume)} in target "
            f"{escape(from_target)}"
            + (
                f" (holds backup {escape(v['standby']['applied'])})"
                if v["standby"]["applied"]
                else ""
            )
        ),
    )


@volume_app.command("activate")
@handle_errors
def activate(
    name: str,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until it is active"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Make standby NAME a normal volume: it stops following, a half-applied backup is
    reverted to the last complete one (an apply running completes first), and it can then
    be attached read-write."""
    with ManagerClient.discover(api, dir) as c:
        vol = c.activate(name)
        if wait:
            with progress(f"activating {name}") as update:
                vol = c.wait_volume(
                    name,
                    lambda v: (v.get("standby") or {}).get("state") == "active",
                    timeout,
                    lambda v: update(
                        None, str((v.get("standby") or {}).get("phase") or "settling")
                    ),
                )
    sb = vol.get("standby") or {}
    render(
        vol,
        output,
        lambda v: say(
            f"volume [bold]{escape(name)}[/bold] "
            + ("is active" if sb.get("state") == "active" else "is being activated")
            + f": holds backup {escape(sb.get('applied') or '?')} of {escape(sb.get('source_volume', '?'))}"
        ),
    )
