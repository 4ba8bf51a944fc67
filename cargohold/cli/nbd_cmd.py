"""``cargohold nbd-serve``: serve one local replica over NBD (1 replica, no network).

For trying clients against cargohold, for tests, and to measure the NBD layer's own cost.
The replica is a FileStore in ``--dir`` (created when missing); SIGTERM or SIGINT drains
the requests in flight, flushes, closes the replica cleanly and exits 0. The process
itself is ``frontend/daemon.py``; this module parses the options.
"""

from __future__ import annotations

import typer

from cargohold.cli.main import app
from cargohold.cli.replica_cmd import console, parse_size, split_addr
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.errors import CargoholdError
from cargohold.logs import setup_logging


def _split(addr: str) -> tuple[str, int]:
    return split_addr(addr, DEFAULT_NBD_PORT)


@app.command("nbd-serve")
def nbd_serve(
    dir: str = typer.Option(..., "--dir", help="directory of the replica (created if missing)"),
    size: str = typer.Option(
        None, help="size when creating (default 1GiB); a larger size expands an existing one"
    ),
    listen: str = typer.Option(
        None, help=f"HOST:PORT (default 127.0.0.1:{DEFAULT_NBD_PORT}; port 0 = any)"
    ),
    unix: str = typer.Option(None, help="also listen on this unix socket"),
    name: str = typer.Option("", help="export name (the empty name always works too)"),
    read_only: bool = typer.Option(False, "--read-only", help="refuse writes, trims, zeroes"),
) -> None:
    """Serve a local replica over NBD until SIGTERM/SIGINT."""
    from cargohold.frontend import daemon
    from cargohold.settings import NBDSettings

    setup_logging()
    try:
        host, port = _split(listen) if listen else ("127.0.0.1", DEFAULT_NBD_PORT)
        config = daemon.NbdServeRun(
            dir=dir,
            size=parse_size(size, "--size") if size else None,
            host=host,
            port=port,
            unix=unix,
            name=name,
            read_only=read_only,
            nbd=NBDSettings(),  # CARGOHOLD_NBD_*: connection limits and timeouts
        )
        daemon.run(config)
    except (CargoholdError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
