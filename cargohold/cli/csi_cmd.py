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
        ..., help="gRPC endpoint: unix:///PATH (the socket the CSI sidecars talk to)"
    ),
    node_id: str = typer.Option(..., "--node-id", help="this node's name (the agent's --node)"),
    controller: bool = typer.Option(False, "--controller", help="serve the Controller service"),
    node: bool = typer.Option(False, "--node", help="serve the Node service (needs root)"),
    state_dir: str = typer.Option(
        "/var/lib/cargohold/csi", help="the node service's records of staged volumes"
    ),
    max_volumes: int = typer.Option(
        0, help="NodeGetInfo's max_volumes_per_node (0: no limit)", min=0
    ),
    zone: str = typer.Option(
        None, help="this node's zone for topology (default: what the manager knows)"
    ),
    timeout: float = typer.Option(
        120.0, help="seconds an RPC waits for the manager to carry out a request"
    ),
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Serve the CSI driver csi.cargohold.io for Kubernetes."""
    from cargohold.control.client import ManagerClient
    from cargohold.csi import StubsMissing
    from cargohold.errors import CargoholdError

    setup_logging(quiet=["httpx"])
    if not controller and not node:
        typer.echo("error: give --controller, --node or both", err=True)
        raise typer.Exit(2)
    try:
        from cargohold.csi.server import DriverConfig, build

        client = ManagerClient.discover(api, dir)
        config = DriverConfig(
            endpoint=endpoint,
            node_id=node_id,
            controller=controller,
            node=node,
            state_dir=state_dir,
            max_volumes=max_volumes,
            zone=zone,
            timeout=timeout,
        )
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
