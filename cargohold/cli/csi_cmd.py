"""``cargohold csi``: run the CSI driver (Identity + Controller and/or Node) on a unix socket.

cargohold csi --endpoint unix:///csi/csi.sock --node-id node-1 --controller --node
cargohold csi --endpoint unix:///csi/csi.sock --node-id "$NODE_NAME" --node \
    --api http://cargohold-manager:9600

The manager is found like every other command: --api / $CARGOHOLD_API, else the local
cluster of --dir / $CARGOHOLD_DIR. The mapping of CSI onto cargohold: docs/kubernetes.md.
"""

from __future__ import annotations

import signal
import threading

import typer

from cargohold.cli.main import app
from cargohold.cli.output import API, DIR
from cargohold.logs import setup_logging


@app.command("csi")
def csi(
    endpoint: str = typer.Option(
        None, help="gRPC endpoint: unix:///PATH (the socket the CSI sidecars talk to)"
    ),
    node_id: str = typer.Option(None, "--node-id", help="this node's name (the agent's --node)"),
    controller: bool = typer.Option(False, "--controller", help="serve the Controller service"),
    node: bool = typer.Option(False, "--node", help="serve the Node service (needs root)"),
    state_dir: str = typer.Option(
        None, help="the node service's records of staged volumes (default /var/lib/cargohold/csi)"
    ),
    max_volumes: int = typer.Option(
        None,
        help="volumes per node: what NodeGetInfo reports and ControllerPublish enforces "
        "(default 0: no limit)",
        min=0,
    ),
    zone: str = typer.Option(
        None, help="this node's zone for topology (default: what the manager knows)"
    ),
    timeout: float = typer.Option(
        None, help="seconds an RPC waits for the manager to carry out a request (default 120)"
    ),
    nbd_tls_dir: str = typer.Option(
        None, help="the node's credentials, for engines that serve NBD over TLS (nbds://)"
    ),
    pvc_events: bool = typer.Option(
        None,
        "--pvc-events/--no-pvc-events",
        help="controller: post volume events as Kubernetes Events on their PVCs (default on "
        "where Kubernetes credentials are found)",
    ),
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Serve the CSI driver csi.cargohold.io for Kubernetes."""
    from cargohold.control.client import ManagerClient
    from cargohold.csi import StubsMissing
    from cargohold.csi.settings import CsiSettings
    from cargohold.errors import CargoholdError, ConfigError

    setup_logging(quiet=["httpx"])
    flags = {
        "endpoint": endpoint,
        "node_id": node_id,
        "controller": controller or None,  # an absent switch leaves CARGOHOLD_CSI_* its say
        "node": node or None,
        "state_dir": state_dir,
        "max_volumes": max_volumes,
        "zone": zone,
        "timeout": timeout,
        "nbd_tls_dir": nbd_tls_dir,
        "pvc_events": pvc_events,
    }
    try:
        # flags win; what no flag gives comes from CARGOHOLD_CSI_*, else the default
        config = CsiSettings(**{k: v for k, v in flags.items() if v is not None})
        for name in ("endpoint", "node_id"):
            if not getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"give {flag} or {CsiSettings.variable(name)}")
    except CargoholdError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    if not config.controller and not config.node:
        typer.echo("error: give --controller, --node or both", err=True)
        raise typer.Exit(2)
    try:
        from cargohold.csi.server import build

        client = ManagerClient.discover(api, dir)
        server = build(config, client)
    except StubsMissing as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except CargoholdError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=10).wait()
    client.close()
