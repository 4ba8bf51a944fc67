"""``cargohold backup-target ...``: where backups go — an S3 bucket (and prefix) or a
filesystem path (an NFS mount) — with the credentials and the repository key the manager
keeps (docs/backups.md). The admin's commands.

    cargohold backup-target add nfs file:///mnt/backups --generate-key ~/nfs.key
    cargohold backup-target add s3 s3://bucket/cluster-a --endpoint https://s3.example \\
        --credentials-file ~/.aws/credentials --key-file ~/s3.key
    cargohold backup-target list
    cargohold backup-target export-key s3 --to ~/s3.key.copy

Secrets never go on the command line (``ps`` shows it): files or the environment only.
"""

from __future__ import annotations

import base64
from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.backup_credentials import (
    LOSS_WARNING,
    generate_key,
    read_ca_bundle,
    read_credentials,
    read_key,
    write_secret_file,
)
from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    Format,
    age,
    err_console,
    fields,
    handle_errors,
    render,
    say,
    table,
)
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

target_app = typer.Typer(help="Add, list and remove backup targets (S3 or a filesystem path).")
app.add_typer(target_app, name="backup-target", no_args_is_help=True)


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/bold yellow] {escape(message)}", soft_wrap=True)


def print_targets(targets: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(t["name"]),
            escape(t["url"]),
            escape(t.get("endpoint") or ""),
            "yes" if t.get("has_credentials") else "no",
            escape(age(t.get("last_sync"))) if t.get("last_sync") else "never",
            escape(t.get("error") or ""),
        )
        for t in targets
    ]
    table(("NAME", "URL", "ENDPOINT", "CREDENTIALS", "SYNCED", "ERROR"), rows)


@target_app.command("add")
@handle_errors
def add(
    name: str,
    url: str = typer.Argument(..., help="s3://BUCKET/PREFIX or file:///PATH"),
    endpoint: str = typer.Option("", "--endpoint", help="S3: the endpoint URL"),
    region: str = typer.Option("", "--region", help="S3: the region"),
    credentials_file: str | None = typer.Option(
        None,
        "--credentials-file",
        help="access_key=/secret_key= lines or an AWS credentials file (default: "
        "$CARGOHOLD_BACKUP_ACCESS_KEY/_SECRET_KEY or $AWS_ACCESS_KEY_ID/..._SECRET_ACCESS_KEY)",
    ),
    ca_bundle: str | None = typer.Option(
        None, "--ca-bundle", help="PEM file: the CAs of the S3 endpoint"
    ),
    key_file: str | None = typer.Option(
        None, "--key-file", help="the repository key (32 bytes, raw or base64)"
    ),
    new_key: str | None = typer.Option(
        None, "--generate-key", help="make a new random key into this NEW file (mode 0600)"
    ),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Add a target: the manager opens the repository there with the key (or makes one),
    keeps the credentials and the key, and imports the backups it lists."""
    if (key_file is None) == (new_key is None):
        raise ConfigError("give the repository key: --key-file FILE or --generate-key FILE")
    access, secret = read_credentials(credentials_file)
    ca = read_ca_bundle(ca_bundle)
    key = read_key(key_file) if key_file is not None else b""
    with ManagerClient.discover(api, dir) as c:
        if new_key is not None:
            key = generate_key(new_key)
        t = c.create_backup_target(
            name,
            url,
            base64.b64encode(key).decode(),
            endpoint=endpoint,
            region=region,
            ca_bundle=ca,
            access_key=access,
            secret_key=secret,
        )
        found = len(c.backups(target=name)) if output is Format.TABLE else 0
    if new_key is not None:
        warn(f"the repository key is in {new_key}. {LOSS_WARNING}.")
    render(
        t,
        output,
        lambda t: say(
            f"backup target [bold]{escape(name)}[/bold] added: {escape(url)} "
            f"({found} backup{'s' if found != 1 else ''} there)"
        ),
    )


@target_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List the backup targets (never their credentials or keys)."""
    with ManagerClient.discover(api, dir) as c:
        render(c.backup_targets(), output, print_targets)


@target_app.command("get")
@handle_errors
def get(name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Show one backup target."""
    with ManagerClient.discover(api, dir) as c:
        t = c.backup_target(name)
    keys = ("name", "url", "endpoint", "region", "has_credentials", "created_at", "last_sync")
    render(t, output, lambda t: fields(t, (*keys, "error")))


@target_app.command("delete")
@handle_errors
def delete(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Forget a target and its backups' records. The repository keeps every backup: add
    the target again (with its key) to see them."""
    with ManagerClient.discover(api, dir) as c:
        t = c.delete_backup_target(name)
    render(t, output, lambda t: say(f"backup target [bold]{escape(name)}[/bold] removed"))


@target_app.command("sync")
@handle_errors
def sync(name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Import the backups the repository lists that this cluster has no record of."""
    with ManagerClient.discover(api, dir) as c:
        got = c.sync_backup_target(name)

    def show(g: dict[str, Any]) -> None:
        say(f"{g['backups']} backups in {escape(name)}, {len(g['imported'])} imported")
        if g["missing"]:
            warn(f"no longer in the repository (records kept): {', '.join(g['missing'])}")

    render(got, output, show)


@target_app.command("gc")
@handle_errors
def gc(name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Free the space of deleted backups (never what a running backup or restore uses)."""
    with ManagerClient.discover(api, dir) as c:
        got = c.gc_backup_target(name)
    render(got, output, lambda g: fields(g["counts"], sorted(g["counts"]), f"gc of {name}"))


@target_app.command("export-key")
@handle_errors
def export_key(
    name: str,
    to: str | None = typer.Option(None, "--to", help="write it to this NEW file (mode 0600)"),
    stdout: bool = typer.Option(False, "--stdout", help="print it (base64) on stdout"),
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Get a copy of the target's repository key. Losing it loses the backups."""
    if (to is None) == (not stdout):
        raise ConfigError("say where the key goes: --to FILE (mode 0600) or --stdout")
    with ManagerClient.discover(api, dir) as c:
        key = c.export_backup_key(name)["repository_key"]
    if to is not None:
        write_secret_file(to, key + "\n")
        say(f"the repository key of [bold]{escape(name)}[/bold] is in {escape(to)} (mode 0600)")
    else:
        warn(
            f"printing the repository key of {name}: anyone who reads it (and the target) "
            "reads every backup there; do not leave it in logs or shell history"
        )
        typer.echo(key)
    warn(LOSS_WARNING)
