"""``cargohold manager``: run the control plane's manager (REST API, reconcilers).

cargohold manager --state sqlite:/var/lib/cargohold/state.db --listen 0.0.0.0:9600 \
    --tls-dir /etc/cargohold/manager --init  # once: writes /var/lib/cargohold/admin-token
cargohold manager --state sqlite:/var/lib/cargohold/state.db --listen 0.0.0.0:9600 \
    --tls-dir /etc/cargohold/manager
cargohold manager --state etcd:https://10.0.0.5:2379 --etcd-tls-dir /etc/cargohold/etcd-client \
    --listen 0.0.0.0:9600 --tls-dir /etc/cargohold/manager --id mgr-b

The TCP socket serves HTTPS with the credentials of ``--tls-dir`` (its certificate:
``cargohold://<cluster>/manager/<name>``); without it the manager refuses to start unless
``--plaintext`` (no TLS, no authentication: benchmarks only) is given. docs/security.md.
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
from cargohold.security.tls import Credentials, warn_plaintext

DEFAULT_MANAGER_PORT = 9600


@app.command("manager")
def manager(
    state: str = typer.Option(
        ..., help="state store: sqlite:PATH (one manager) or etcd:https://HOST:PORT[,...]"
    ),
    etcd_tls_dir: str = typer.Option(
        None,
        "--etcd-tls-dir",
        envvar="CARGOHOLD_MANAGER_ETCD_TLS_DIR",
        help="the etcd client certificate's credentials directory (tls.crt, tls.key, "
        "ca.crt, ca.crl; from etcd's CA): needed for https:// etcd endpoints",
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
        envvar=CliSettings.variable("manager_cluster_id"),
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
        envvar="CARGOHOLD_TLS_DIR",
        help="credentials directory (tls.crt, tls.key, ca.crt, ca.crl) of the manager's "
        "certificate: the API is served over HTTPS",
    ),
    key_dir: str = typer.Option(
        None,
        "--key-dir",
        envvar="CARGOHOLD_MANAGER_KEY_DIR",
        help="directory of key-encryption keys for encrypted volumes (a mounted Secret in "
        "Kubernetes; docs/keys.md)",
    ),
    plaintext: bool = typer.Option(
        False, "--plaintext", help="serve plain HTTP and authenticate nobody (benchmarks only)"
    ),
    admin_token_file: str = typer.Option(
        None,
        "--admin-token-file",
        help="with --init: where to write the first admin token (mode 0600; default: "
        "admin-token beside the SQLite file, else in the working directory)",
    ),
) -> None:
    """Serve the manager's REST API and, when elected leader, run the reconcilers."""
    from cargohold.control.manager import Manager
    from cargohold.control.settings import ManagerSettings
    from cargohold.ui.app import mount

    setup_logging(quiet=["httpx"])  # one line per etcd request otherwise
    if cluster_id and not init:
        console.print("[red]error:[/red] --cluster-id goes with --init (a new state store)")
        raise typer.Exit(2)
    if not listen and not unix:
        console.print("[red]error:[/red] give --listen HOST:PORT and/or --unix PATH")
        raise typer.Exit(2)
    if not tls_dir and not plaintext:
        console.print(
            "[red]error:[/red] give --tls-dir DIR (or $CARGOHOLD_TLS_DIR), or --plaintext "
            "to serve without TLS and authentication"
        )
        raise typer.Exit(2)
    if plaintext:
        console.print(f"[bold red]{warn_plaintext('the manager API')}[/bold red]", soft_wrap=True)
    if init and not admin_token_file:
        base = state.removeprefix("sqlite:") if state.startswith("sqlite:") else "x"
        admin_token_file = os.path.join(os.path.dirname(os.path.abspath(base)), "admin-token")
    try:
        tls = None if plaintext else Credentials.load(tls_dir, client_cert_optional=True)
        given = {"etcd_tls_dir": etcd_tls_dir, "key_dir": key_dir}
        settings = ManagerSettings(**{k: v for k, v in given.items() if v})
        addr = split_addr(listen, DEFAULT_MANAGER_PORT) if listen else None
        mgr = Manager(
            state,
            id or f"{socket.gethostname()}-{os.getpid()}",
            settings,
            init=init,
            cluster_id=cluster_id,
            tls=tls,
            admin_token_file=admin_token_file if init else None,
            ca_dir=ca_dir or settings.ca_dir or None,
            extend=mount,  # the web console at /ui (docs/ui.md)
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
