"""``cargohold backup ...``: back volumes up to a backup target, list, delete and restore
backups through the manager, and verify a repository offline (docs/backups.md).

    cargohold backup create data --target s3 --label app=db --wait
    cargohold backup list --volume data
    cargohold backup restore bk-data-20261206140000-1a2b data-restored --wait
    cargohold backup verify file:///mnt/backups --key-file ~/nfs.key --read-data
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.backup_credentials import read_ca_bundle, read_credentials, read_key
from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    age,
    fail,
    fields,
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
from cargohold.cli.snapshot_cmd import parse_labels
from cargohold.cli.units import positive_size
from cargohold.control.client import ManagerClient, OperationFailed

backup_app = typer.Typer(help="Back volumes up, list, delete, restore and verify backups.")
app.add_typer(backup_app, name="backup", no_args_is_help=True)


def print_backups(backups: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(b["id"]),
            escape(b["volume"]),
            escape(b["target"]),
            styled(b.get("state")),
            escape(str((b.get("info") or {}).get("mode") or "")),
            human_size(b.get("size_bytes")),
            human_size((b.get("info") or {}).get("bytes_new")),
            escape(age(b.get("created"))),
            escape(tags(b.get("labels"))),
            escape(b.get("error") or ""),
        )
        for b in backups
    ]
    table(
        ("ID", "VOLUME", "TARGET", "STATE", "MODE", "SIZE", "NEW", "CREATED", "LABELS", "ERROR"),
        rows,
    )


def show_backup(b: dict[str, Any]) -> None:
    keys = ("id", "volume", "target", "state", "snapshot", "parent", "repository_id")
    fields(b, (*keys, "size_bytes", "created", "finished", "labels", "tenant", "error"))
    if b.get("info"):
        info = b["info"]
        fields(info, [k for k in info if k not in ("labels", "id", "volume")], "repository")


@backup_app.command("create")
@handle_errors
def create(
    volume: str,
    target: str = typer.Option(..., "--target", help="the backup target's name"),
    snapshot: str | None = typer.Option(
        None, "--snapshot", help="back up this snapshot (default: one taken now)"
    ),
    label: list[str] | None = typer.Option(None, "--label", help="KEY=VALUE (repeatable)"),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="wait until it is done"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Back a volume up (incremental to its newest backup on that target, if any)."""
    with ManagerClient.discover(api, dir) as c:
        op = c.create_backup(volume, target, snapshot, parse_labels(label))
        bid = op["args"]["backup"]
        if wait:
            with progress(f"backup of {volume} to {target}") as update:
                try:
                    c.wait_operation(op["id"], timeout, operation_progress(update))
                except OperationFailed:
                    pass  # the backup's record says why
        b = c.backup(bid)
    if wait and b.get("state") != "succeeded":
        if output is not Format.TABLE:
            render(b, output, show_backup)
        raise fail(f"backup {bid} of {volume} failed: {b.get('error') or 'no reason given'}")

    def done(b: dict[str, Any]) -> None:
        if not wait:
            say(f"backup [bold]{escape(bid)}[/bold] of {escape(volume)} queued")
            return
        info = b.get("info") or {}
        why = f" ({info['reason']})" if info.get("reason") else ""
        say(
            f"backup [bold]{escape(bid)}[/bold] of {escape(volume)} done: "
            f"{escape(str(info.get('mode', '')))}{escape(why)}, "
            f"{human_size(info.get('bytes_read'))} read, {human_size(info.get('bytes_new'))} new"
        )

    render(b, output, done)


@backup_app.command("list")
@handle_errors
def list_(
    volume: str | None = typer.Option(None, "--volume", help="only this volume's"),
    target: str | None = typer.Option(None, "--target", help="only this target's"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """List backups, oldest first (they outlive their volumes)."""
    with ManagerClient.discover(api, dir) as c:
        render(c.backups(volume, target), output, print_backups)


@backup_app.command("get")
@handle_errors
def get(backup: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Show one backup, with what the repository recorded of it."""
    with ManagerClient.discover(api, dir) as c:
        render(c.backup(backup), output, show_backup)


@backup_app.command("delete")
@handle_errors
def delete(
    backup: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Delete a backup from its repository (its space is freed by `backup-target gc`)."""
    with ManagerClient.discover(api, dir) as c:
        b = c.delete_backup(backup)
    render(b, output, lambda b: say(f"backup [bold]{escape(backup)}[/bold] deleted"))


@backup_app.command("restore")
@handle_errors
def restore(
    backup: str,
    name: str,
    replicas: int | None = typer.Option(None, "--replicas", min=1, max=16, help="default 3"),
    size: str | None = typer.Option(None, "--size", help="default: the backup's size"),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="wait until it is restored"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Restore a backup into a new volume NAME (usable once it is restored)."""
    with ManagerClient.discover(api, dir) as c:
        b = c.backup(backup)
        size_bytes = positive_size(size, "--size") if size else int(b["size_bytes"])
        vol = c.create_volume(name, size_bytes, replicas=replicas, source={"backup": backup})
        if wait:
            with progress(f"restoring {backup} into {name}") as update:
                op = c.find_operation(name, "restore")
                if op is not None:
                    try:
                        c.wait_operation(op["id"], timeout, operation_progress(update))
                    except OperationFailed:
                        pass  # the volume says why
                vol = c.wait_volume(
                    name,
                    lambda v: v.get("state") != "restoring",
                    timeout,
                    lambda v: update(None, str(v.get("state"))),
                )
    if vol.get("state") == "failed":
        raise fail(f"restore of {backup} into {name} failed: {vol.get('error')}")
    msg = "restored from" if wait else "being restored from"
    render(vol, output, lambda v: say(f"volume [bold]{escape(name)}[/bold] {msg} {backup}"))


@backup_app.command("verify")
@handle_errors
def verify(
    url: str = typer.Argument(..., help="s3://BUCKET/PREFIX or file:///PATH"),
    key_file: str = typer.Option(..., "--key-file", help="the repository key"),
    backup: str | None = typer.Option(
        None, "--backup", help="only this backup (its repository id)"
    ),
    read_data: bool = typer.Option(False, "--read-data", help="decrypt and check every chunk"),
    endpoint: str | None = typer.Option(None, "--endpoint", help="S3: the endpoint URL"),
    region: str | None = typer.Option(None, "--region", help="S3: the region"),
    credentials_file: str | None = typer.Option(
        None, "--credentials-file", help="as for backup-target add (default: the environment)"
    ),
    ca_bundle: str | None = typer.Option(None, "--ca-bundle", help="PEM: the endpoint's CAs"),
    output: Format = OUTPUT,
) -> None:
    """Check a backup repository offline, without a manager or a cluster.

    Its structure, every authentication tag, and with --read-data every chunk's checksum.
    Exit 1 when anything is wrong; the report names each bad chunk and object."""
    from cargohold.backup import verify as verify_mod  # the library, only for this command
    from cargohold.backup.repository import Repository
    from cargohold.backup.targets import open_target

    access, secret = read_credentials(credentials_file)
    key = read_key(key_file)
    ca_path = ca_bundle if ca_bundle and read_ca_bundle(ca_bundle) else None
    target = open_target(
        url,
        endpoint=endpoint,
        access_key=access or None,
        secret_key=secret or None,
        region=region,
        ca_bundle=ca_path,
    )
    with progress(f"verifying {url}") as update:
        update(None, "reading data" if read_data else "checking structure")
        report = verify_mod.verify(Repository.open(target, key), backup, read_data).to_dict()

    def show(r: dict[str, Any]) -> None:
        keys = ("target", "backups", "chunks", "packs", "blobs_read", "bytes_read", "ok")
        fields(r, keys, "verify")
        for e in r["errors"]:
            say(f"[red]error:[/red] {escape(e)}")
        for w in r["warnings"]:
            say(f"[yellow]warning:[/yellow] {escape(w)}")

    render(report, output, show)
    if not report["ok"]:
        raise typer.Exit(1)
