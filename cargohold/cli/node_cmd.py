"""``cargohold node ...``: the cluster's nodes as the manager sees them, and taking them out
of service (cordon, drain). ``node kill`` / ``node start`` act on a local cluster's processes
(``cargohold up``) to rehearse failures.

    cargohold node list
    cargohold node get node-2 -o yaml
    cargohold node drain node-2 --wait
    cargohold node kill node-2 && cargohold node start node-2
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

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
    progress,
    render,
    say,
    styled,
    table,
    tags,
)
from cargohold.control.client import ManagerClient, WaitTimeout, cluster_dir
from cargohold.control.settings import ClientSettings

node_app = typer.Typer(help="List nodes, cordon and drain them; kill and start local ones.")
app.add_typer(node_app, name="node", no_args_is_help=True)

NODE_FIELDS = (
    "name",
    "state",
    "zone",
    "address",
    "replica_port",
    "tags",
    "cordoned",
    "draining",
    "heartbeat_at",
    "down_since",
    "registered_at",
    "agent_pid",
    "error",
)


def node_state(n: dict[str, Any]) -> str:
    text = styled(n.get("state"))
    return f"{text} [yellow](draining)[/yellow]" if n.get("draining") else text


def print_nodes(nodes: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(n["name"]),
            node_state(n),
            escape(n.get("zone") or ""),
            escape(f"{n.get('address', '')}:{n.get('replica_port', '')}"),
            escape(tags(n.get("tags"))),
            escape(age(n.get("heartbeat_at"))),
        )
        for n in sorted(nodes, key=lambda n: n["name"])
    ]
    table(("NAME", "STATE", "ZONE", "REPLICA SERVER", "TAGS", "HEARTBEAT"), rows)


def print_node(n: dict[str, Any]) -> None:
    fields(n, NODE_FIELDS)


@node_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List the nodes."""
    with ManagerClient.discover(api, dir) as c:
        render(c.nodes(), output, print_nodes)


@node_app.command("get")
@handle_errors
def get(name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """Show a node; as a table, with its disks and replicas."""
    with ManagerClient.discover(api, dir) as c:
        node = c.node(name)
        if output is not Format.TABLE:
            render(node, output, print_node)
            return
        disks = c.disks(name)
        replicas = [r for r in c.replicas() if r.get("node") == name]
    print_node(node)
    if disks:
        table(
            ("DISK", "PATH", "CAPACITY", "TAGS", "SCHEDULABLE"),
            [
                (
                    escape(d["name"]),
                    escape(d.get("path", "")),
                    human_size(d.get("capacity_bytes")),
                    escape(tags(d.get("tags"))),
                    "yes" if d.get("schedulable", True) else "[yellow]no[/yellow]",
                )
                for d in disks
            ],
        )
    if replicas:
        table(
            ("REPLICA", "VOLUME", "DISK", "MODE", "STATE"),
            [
                (
                    escape(r["id"]),
                    escape(r.get("volume", "")),
                    escape(r.get("disk", "")),
                    escape(r.get("mode") or ""),
                    styled(r.get("state")),
                )
                for r in replicas
            ],
        )


@node_app.command("cordon")
@handle_errors
def cordon(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Place no new replicas or engines on a node."""
    with ManagerClient.discover(api, dir) as c:
        node = c.cordon(name)
    render(node, output, lambda n: say(f"node [bold]{escape(name)}[/bold] cordoned"))


@node_app.command("uncordon")
@handle_errors
def uncordon(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Let a node take new replicas and engines again (also stops a drain)."""
    with ManagerClient.discover(api, dir) as c:
        node = c.uncordon(name)
    render(node, output, lambda n: say(f"node [bold]{escape(name)}[/bold] uncordoned"))


@node_app.command("drain")
@handle_errors
def drain(
    name: str,
    wait: bool = typer.Option(False, "--wait/--no-wait", help="wait until no replica is left"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Cordon a node and move its replicas to other nodes (new copies first)."""
    with ManagerClient.discover(api, dir) as c:
        node = c.drain(name)
        if wait:

            def left() -> list[dict[str, Any]]:
                return [r for r in c.replicas() if r.get("node") == name]

            first = len(left())
            with progress(f"draining {name}") as update:

                def on(reps: list[dict[str, Any]]) -> None:
                    done = first - len(reps)
                    update(done / first if first else 1.0, f"{len(reps)} replicas left")

                try:
                    c.poll(left, lambda reps: not reps, timeout, on, f"node {name} to drain")
                except WaitTimeout as e:
                    ids = ", ".join(r["id"] for r in (e.detail.get("last") or ()))
                    raise WaitTimeout(
                        f"node {name} still holds {ids} after {timeout:g}s: is there another "
                        "node with room for them? (`cargohold volume get VOLUME`)"
                    ) from None
            node = c.node(name)
    msg = "drained" if wait else "draining (its replicas are being moved)"
    render(node, output, lambda n: say(f"node [bold]{escape(name)}[/bold] {msg}"))


def _local_cluster(dir: str | None) -> Any:
    try:
        from cargohold.launcher.cluster import LocalCluster
    except ImportError:
        raise fail("local clusters need cargohold.launcher, which is not installed") from None
    path = cluster_dir(dir)
    if not (path / "cluster.json").exists():
        raise fail(
            f"no local cluster in {path} (start one with `cargohold up`); node kill and "
            "start act on local clusters only",
            3,
        )
    return LocalCluster.load(str(path))


LOCAL_API = typer.Option(
    None,
    "--api",
    envvar=ClientSettings.variable("api"),
    help="ignored: acts on the local cluster in --dir",
)


@node_app.command("kill")
@handle_errors
def kill(name: str, api: str | None = LOCAL_API, dir: str | None = DIR) -> None:
    """SIGKILL a local node: its agent, replica server and engines (local clusters)."""
    killed = _local_cluster(dir).kill_node(name)
    say(f"node [bold]{escape(name)}[/bold] {'killed' if killed else 'was not running'}")


@node_app.command("start")
@handle_errors
def start(name: str, api: str | None = LOCAL_API, dir: str | None = DIR) -> None:
    """Start a killed local node's agent again and wait until the manager sees it up."""
    started = _local_cluster(dir).start_node(name)
    say(f"node [bold]{escape(name)}[/bold] {'started' if started else 'was running already'}")
