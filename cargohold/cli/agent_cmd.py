"""``cargohold agent``: run a node's agent — its replica server and the engines the manager
assigns to it — until SIGTERM/SIGINT. One per node; ``cargohold up`` starts them for local
clusters.

    cargohold agent --node node-1 --api http://10.0.0.10:9600 --api unix:/run/cargohold.sock \\
        --address 10.0.0.1 --dir /var/lib/cargohold --zone a --disk /mnt/ssd0:500GiB
"""

from __future__ import annotations

import asyncio
import logging
import signal

import typer

from cargohold.agent.settings import AgentSettings, parse_disk
from cargohold.cli.main import app
from cargohold.cli.replica_cmd import console
from cargohold.errors import CargoholdError, ConfigError
from cargohold.logs import setup_logging
from cargohold.settings import ProcessSettings


def _node_bandwidth(text: str | None) -> int | None:
    from cargohold.qos_limits import parse_bandwidth

    return None if text is None else parse_bandwidth(text, "--node-bandwidth: ")


@app.command("agent")
def agent(
    node: str = typer.Option(None, help="this node's name (a DNS-1123 label)"),
    api: list[str] = typer.Option(
        None, "--api", help="manager URL: http://HOST:PORT or unix:/PATH (repeatable: failover)"
    ),
    address: str = typer.Option(None, help="address the replica server listens on"),
    dir: str = typer.Option(None, "--dir", help="node directory: state, logs, default disk"),
    zone: str = typer.Option(None, help="failure zone of this node"),
    tag: list[str] = typer.Option(None, "--tag", help="node tag for placement (repeatable)"),
    disk: list[str] = typer.Option(
        None, "--disk", help="PATH[:CAPACITY] holding replicas (repeatable; default DIR/disk-0)"
    ),
    replica_port: int = typer.Option(
        None, min=1, max=65535, help="replica server port (default: the last one, else any)"
    ),
    heartbeat: float = typer.Option(
        None, min=0.05, help="seconds between heartbeats (default: what the manager says)"
    ),
    nbd_address: str = typer.Option(
        None,
        help="address the engines' NBD endpoints listen on (default 127.0.0.1: only the "
        "consumer on this node; another address needs --nbd-tls-dir)",
    ),
    nbd_tls_dir: str = typer.Option(
        None, help="credentials directory for NBD over TLS (a network --nbd-address)"
    ),
    join_token_file: str = typer.Option(
        None,
        "--join-token-file",
        help="join the cluster with this join file (cargohold node join-token create "
        "--output) when the node has no certificate yet (docs/security.md)",
    ),
    trash_grace: float = typer.Option(
        None,
        min=0,
        help="seconds a deleted replica stays in its disk's trash (DISK/trash/) before it "
        "is really removed; until then it can be moved back (default 86400)",
    ),
    metrics_port: int = typer.Option(
        None,
        min=0,
        max=65535,
        help="serve the node's Prometheus metrics on this port (GET /metrics; 0: any; "
        "default: none; docs/observability.md)",
    ),
    metrics_address: str = typer.Option(
        None, help="address the metrics listener binds (default: --address)"
    ),
    node_iops: int = typer.Option(
        None,
        min=0,
        help="IOPS this node's disk sustains: busy volumes share it by their QoS weight "
        "(docs/qos.md; default 0: no sharing)",
    ),
    node_bandwidth: str = typer.Option(
        None,
        help="bytes/s this node's disk sustains, a Kubernetes quantity: 400Mi = 400 MiB/s, "
        "500M = 500 MB/s; busy volumes share it by their QoS weight (docs/qos.md; default "
        "0: no sharing)",
    ),
    node_latency_target: str = typer.Option(
        None,
        help="a latency target for the node's engines, e.g. 2ms or 1500us: above it, busy "
        "volumes share a shrinking IOPS budget by their QoS weight (docs/qos.md; default 0: off)",
    ),
    ca_dir: str = typer.Option(
        None,
        "--ca-dir",
        help="the cluster CA (local clusters): the agent issues its replica server's, its "
        "own and each engine's certificates from it (DIR/tls/)",
    ),
    tls_dir: str = typer.Option(
        None,
        "--tls-dir",
        envvar=ProcessSettings.variable("tls_dir"),
        help="the agent's credentials directory (role agent): without --ca-dir",
    ),
    replica_tls_dir: str = typer.Option(
        None, "--replica-tls-dir", help="the replica server's credentials (role replica)"
    ),
) -> None:
    """Run a node: its replica server, and the engines the manager assigns to it."""
    from cargohold.agent.agent import Agent
    from cargohold.control.model import check_name

    setup_logging(quiet=["httpx"])  # not a line per heartbeat
    try:
        flags = {
            "node": node,
            "api": list(api) if api else None,
            "address": address,
            "dir": dir,
            "zone": zone,
            "tags": list(tag) if tag else None,
            "disks": [parse_disk(d) for d in disk] if disk else None,
            "replica_port": replica_port,
            "heartbeat": heartbeat,
            "trash_grace": trash_grace,
            "metrics_port": metrics_port,
            "metrics_address": metrics_address,
            "node_iops": node_iops,
            "node_bandwidth": _node_bandwidth(node_bandwidth),
            "node_latency_target": node_latency_target,
            "nbd_address": nbd_address,
            "nbd_tls_dir": nbd_tls_dir,
            "ca_dir": ca_dir,
            "tls_dir": tls_dir,
            "replica_tls_dir": replica_tls_dir,
            "join_token_file": join_token_file,
        }
        # flags win; what no flag gives comes from CARGOHOLD_AGENT_*, else the default
        config = AgentSettings(**{k: v for k, v in flags.items() if v is not None})
        for name in ("node", "api", "address", "dir"):
            if not getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"give {flag} or {AgentSettings.variable(name)}")
        node = config.node
        check_name(node, "node name")
        the_agent = Agent(config)
    except (CargoholdError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await the_agent.start()
            await the_agent.run(stop)
        finally:
            if config.handover:  # an upgrade: the next agent adopts what runs
                await the_agent.hand_over()
            else:
                logging.getLogger("cargohold.agent").info("node %s: shutting down", node)
                await the_agent.shutdown()

    try:
        asyncio.run(main())
    except (CargoholdError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
