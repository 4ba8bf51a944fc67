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

from cargohold.cli.main import app
from cargohold.cli.replica_cmd import console
from cargohold.cli.units import parse_size
from cargohold.errors import CargoholdError, ConfigError
from cargohold.logs import setup_logging


def parse_disk(text: str) -> tuple[str, int | None]:
    """'PATH' or 'PATH:CAPACITY' (e.g. /mnt/ssd0:500GiB) -> (path, capacity or None)."""
    path, sep, capacity = text.rpartition(":")
    if sep and path:
        try:
            return path, parse_size(capacity)
        except ConfigError:
            pass  # a ':' that is part of the path
    if not text:
        raise ConfigError("--disk needs a path")
    return text, None


@app.command("agent")
def agent(
    node: str = typer.Option(..., help="this node's name (a DNS-1123 label)"),
    api: list[str] = typer.Option(
        ..., "--api", help="manager URL: http://HOST:PORT or unix:/PATH (repeatable: failover)"
    ),
    address: str = typer.Option(..., help="address the replica server and engines listen on"),
    dir: str = typer.Option(..., "--dir", help="node directory: state, logs, default disk"),
    zone: str = typer.Option("", help="failure zone of this node"),
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
    trash_grace: float = typer.Option(
        86400.0,
        min=0,
        envvar="CARGOHOLD_AGENT_TRASH_GRACE",
        help="seconds a deleted replica stays in its disk's trash (DISK/trash/) before it "
        "is really removed; until then it can be moved back",
    ),
    ca_dir: str = typer.Option(
        None,
        "--ca-dir",
        envvar="CARGOHOLD_CA_DIR",
        help="the cluster CA (local clusters): the agent issues its replica server's, its "
        "own and each engine's certificates from it (DIR/tls/)",
    ),
    tls_dir: str = typer.Option(
        None,
        "--tls-dir",
        envvar="CARGOHOLD_TLS_DIR",
        help="the agent's credentials directory (role agent): without --ca-dir",
    ),
    replica_tls_dir: str = typer.Option(
        None, "--replica-tls-dir", help="the replica server's credentials (role replica)"
    ),
) -> None:
    """Run a node: its replica server, and the engines the manager assigns to it."""
    from cargohold.agent.agent import Agent, AgentConfig
    from cargohold.control.model import check_name

    setup_logging(quiet=["httpx"])  # not a line per heartbeat
    try:
        check_name(node, "node name")
        config = AgentConfig(
            node=node,
            api=api,
            address=address,
            dir=dir,
            zone=zone,
            tags=list(tag or []),
            disks=[parse_disk(d) for d in disk or []],
            replica_port=replica_port,
            heartbeat=heartbeat,
            trash_grace=trash_grace,
            ca_dir=ca_dir,
            tls_dir=tls_dir,
            replica_tls_dir=replica_tls_dir,
        )
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
            logging.getLogger("cargohold.agent").info("node %s: shutting down", node)
            await the_agent.shutdown()

    try:
        asyncio.run(main())
    except (CargoholdError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
