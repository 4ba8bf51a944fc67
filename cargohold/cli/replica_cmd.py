"""``cargohold replica-server`` runs a node's replica server; ``cargohold replica ...`` talks
to one (list, create, delete, info, snapshots, scrub) for operators and scripts: over mutual
TLS with the credentials directory in CARGOHOLD_TLS_DIR (an agent's or a manager's: only
those may create, delete and open any replica), else plain TCP."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cargohold.cli.main import app
from cargohold.cli.units import parse_size, split_addr
from cargohold.constants import DEFAULT_REPLICA_PORT
from cargohold.errors import CargoholdError

replica_app = typer.Typer(help="Talk to a node's replica server.", no_args_is_help=True)
app.add_typer(replica_app, name="replica")
console = Console()


@app.command("replica-server")
def replica_server(
    disk: list[str] = typer.Option(None, "--disk", help="directory for replicas (repeatable)"),
    listen: str = typer.Option(
        None, help=f"HOST:PORT (default 127.0.0.1:{DEFAULT_REPLICA_PORT}; port 0 = any)"
    ),
    unix: str = typer.Option(None, help="also listen on this unix socket"),
    node: str = typer.Option(None, help="node name reported to clients (default: local)"),
    workers: int = typer.Option(None, min=1, max=64, help="processes (replicas sharded by id)"),
    tls_dir: str = typer.Option(
        None,
        "--tls-dir",
        envvar="CARGOHOLD_TLS_DIR",
        help="credentials directory (tls.crt, tls.key, ca.crt, ca.crl): mutual TLS on TCP",
    ),
    plaintext: bool = typer.Option(
        False, "--plaintext", help="no TLS and no authentication (benchmarks only)"
    ),
) -> None:
    """Serve every replica on this node's disks over the replica wire protocol.

    Options not given come from CARGOHOLD_REPLICA_* environment variables, then defaults."""
    from cargohold.logs import setup_logging
    from cargohold.replica.daemon import run
    from cargohold.settings import ReplicaServerSettings

    given: dict[str, Any] = {"unix_socket": unix, "node": node, "workers": workers}
    given |= {"tls_dir": tls_dir, "plaintext": plaintext or None}
    if disk:
        given["disks"] = disk
    if listen:
        given["host"], given["port"] = split_addr(listen)
    try:
        settings = ReplicaServerSettings(**{k: v for k, v in given.items() if v is not None})
    except CargoholdError as e:
        console.print(f"[red]error:[/red] bad settings: {e}")
        raise typer.Exit(2) from None
    if not settings.disks:
        console.print("[red]error:[/red] give at least one --disk (or CARGOHOLD_REPLICA_DISKS)")
        raise typer.Exit(2)
    setup_logging()
    try:
        run(settings)
    except CargoholdError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None


def _run(server: str, fn: Callable[[Any], Awaitable[Any]], replica: str | None = None) -> Any:
    import asyncio  # here: ``cargohold events`` loads this module too
    import os

    from cargohold.replica.client import ReplicaClient
    from cargohold.security.tls import Credentials

    async def go() -> Any:
        host, port = split_addr(server)
        tls_dir = os.environ.get("CARGOHOLD_TLS_DIR")  # an agent's or admin's credentials
        tls = Credentials.load(tls_dir) if tls_dir else None
        c = await ReplicaClient.connect(host, port, tls=tls, replica=replica)
        try:
            return await fn(c)
        finally:
            await c.close()

    try:
        return asyncio.run(go())
    except CargoholdError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None


SERVER = typer.Option(f"127.0.0.1:{DEFAULT_REPLICA_PORT}", "--server", "-s", help="HOST:PORT")
OUTPUT = typer.Option("table", "--output", "-o", help="table or json")


@replica_app.command("list")
def list_(server: str = SERVER, output: str = OUTPUT) -> None:
    """List the replicas on a node."""
    reps = _run(server, lambda c: c.list())
    if output == "json":
        print(json.dumps(reps, indent=2))
        return
    t = Table("replica", "disk", "open", "size", "generation", "epoch")
    for r in reps:
        t.add_row(
            r["id"],
            r["disk"],
            str(r["open"]),
            str(r.get("size", "")),
            str(r.get("generation", "")),
            str(r.get("epoch", "")),
        )
    console.print(t)


@replica_app.command("create")
def create(
    replica: str, size: str = typer.Option(..., help="e.g. 10GiB"), server: str = SERVER
) -> None:
    """Create an empty replica."""
    out = _run(server, lambda c: c.create(replica, parse_size(size, "--size")), replica)
    console.print(
        f"created replica [bold]{out['replica']}[/bold] ({out['size']} bytes) at {out['path']}"
    )


@replica_app.command("delete")
def delete(replica: str, server: str = SERVER) -> None:
    """Delete a replica and its data."""
    _run(server, lambda c: c.delete(replica), replica)
    console.print(f"deleted replica {replica}")


async def _opened(c: Any, replica: str, epoch: int) -> Any:
    await c.open(replica, epoch)
    return c


@replica_app.command("info")
def info(replica: str, server: str = SERVER, epoch: int = 0) -> None:
    """Size, generation, epoch and space of a replica (JSON)."""

    async def go(c: Any) -> Any:
        await _opened(c, replica, epoch)
        return await c.stats()

    print(json.dumps(_run(server, go, replica), indent=2))


@replica_app.command("snapshots")
def snapshots(replica: str, server: str = SERVER, epoch: int = 0, output: str = OUTPUT) -> None:
    """List a replica's snapshots."""

    async def go(c: Any) -> Any:
        await _opened(c, replica, epoch)
        return await c.snapshot_list()

    snaps = _run(server, go, replica)
    if output == "json":
        print(json.dumps(snaps, indent=2))
        return
    t = Table("name", "generation", "size_bytes", "parent", "labels")
    for s in snaps:
        t.add_row(
            s["name"],
            str(s["generation"]),
            str(s["size_bytes"]),
            str(s["parent"] or ""),
            ",".join(f"{k}={v}" for k, v in s["labels"].items()),
        )
    console.print(t)


@replica_app.command("scrub")
def scrub(replica: str, server: str = SERVER, epoch: int = 0) -> None:
    """Verify every allocated block of a replica; exit 1 if any is bad."""

    async def go(c: Any) -> Any:
        await _opened(c, replica, epoch)
        return await c.scrub()

    report = _run(server, go, replica)
    print(json.dumps(report, indent=2))
    if report["bad"]:
        raise typer.Exit(1)
