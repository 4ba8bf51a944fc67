"""``cargohold manager``: run the control plane's manager (REST API, reconcilers).

cargohold manager --state sqlite:/var/lib/cargohold/state.db --listen 0.0.0.0:9600 --init  # once
cargohold manager --state sqlite:/var/lib/cargohold/state.db --listen 0.0.0.0:9600
cargohold manager --state etcd:http://10.0.0.5:2379 --listen 0.0.0.0:9600 --id mgr-b
"""

from __future__ import annotations

import os
import socket

import typer

from cargohold.cli.main import app
from cargohold.cli.replica_cmd import console
from cargohold.cli.settings import CliSettings
from cargohold.cli.units import split_addr
from cargohold.errors import CargoholdError
from cargohold.logs import setup_logging
from cargohold.settings import ProcessSettings

DEFAULT_MANAGER_PORT = 9600


@app.command("manager")
def manager(
    state: str = typer.Option(
        ..., help="state store: sqlite:PATH (one manager) or etcd:http://HOST:PORT[,...]"
    ),
    listen: str = typer.Option(
        None, help=f"API on HOST:PORT (e.g. 0.0.0.0:{DEFAULT_MANAGER_PORT})"
    ),
    unix: str = typer.Option(None, help="API also on this unix socket"),
    id: str = typer.Option(
        None, "--id", help="this manager's name in elections (default: host-pid)"
    ),
    init: bool = typer.Option(
        False,
        "--init",
        envvar=CliSettings.variable("manager_init"),
        help="create a new cluster in an empty state store (refused on one with records); "
        "without it, a missing, empty or broken store is refused",
    ),
    cluster_id: str = typer.Option(
        None,
        "--cluster-id",
        help="with --init: the id of a cluster whose state store was lost (its nodes' disk "
        "stamps carry it), so that its agents act for this manager and its replicas can be "
        "adopted (docs/operations.md)",
    ),
    ca_dir: str = typer.Option(
        None,
        "--ca-dir",
        help="the cluster's CA directory (made with --init when missing): signs the "
        "certificates of joining agents, their renewals and engines' (docs/security.md)",
    ),
    tls_dir: str = typer.Option(
        None,
        "--tls-dir",
        envvar=ProcessSettings.variable("tls_dir"),
        help="the API's credentials directory (tls.crt, tls.key, ca.crt, ca.crl): HTTPS, "
        "callers identified by their client certificates; without it the API is plaintext",
    ),
) -> None:
    """Serve the manager's REST API and, when elected leader, run the reconcilers."""
    from cargohold.control.manager import Manager
    from cargohold.control.settings import ManagerSettings

    setup_logging(quiet=["httpx"])  # one line per etcd request otherwise
    if cluster_id and not init:
        console.print("[red]error:[/red] --cluster-id goes with --init (a new state store)")
        raise typer.Exit(2)
    if not listen and not unix:
        console.print("[red]error:[/red] give --listen HOST:PORT and/or --unix PATH")
        raise typer.Exit(2)
    try:
        settings = ManagerSettings()
        addr = split_addr(listen, DEFAULT_MANAGER_PORT) if listen else None
        mgr = Manager(
            state,
            id or f"{socket.gethostname()}-{os.getpid()}",
            settings,
            init=init,
            cluster_id=cluster_id,
            ca_dir=ca_dir or settings.ca_dir or None,
            tls_dir=tls_dir,
        )
    except CargoholdError as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)  # one line in the log
        raise typer.Exit(2) from None
    try:
        import uvloop

        uvloop.run(mgr.serve(addr, unix))
    except (CargoholdError, OSError) as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
