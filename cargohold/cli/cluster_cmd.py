"""``cargohold up`` / ``down`` / ``status``: a local cluster on this machine, and a summary of
any cluster's state.

    cargohold up --nodes 3 --zones a,b,c      # manager + 3 agents in ~/.cargohold
    cargohold status                          # nodes, volumes, capacity
    cargohold down --purge                    # stop everything, remove the directory

The cluster is found through ``--dir`` / ``$CARGOHOLD_DIR`` (default ``~/.cargohold``);
``status`` also talks to a remote manager given with ``--api`` / ``$CARGOHOLD_API``.
The work is done by ``cargohold.launcher.LocalCluster``.
"""

from __future__ import annotations

import enum
import json
import os
import shlex
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cargohold.cli.main import app
from cargohold.cli.output import EXIT_NOT_FOUND, err_console
from cargohold.control.settings import ClientSettings
from cargohold.control.transport import ClientCredentials
from cargohold.errors import CargoholdError
from cargohold.launcher import LocalCluster, NoCluster, default_dir, get_json, purge_dir

console = Console(highlight=False)

DIR_HELP = "the cluster's directory (default ~/.cargohold)"


class Backend(enum.StrEnum):
    sqlite = "sqlite"
    etcd = "etcd"


class Output(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def _fail(e: CargoholdError) -> typer.Exit:
    console.print(f"[red]error:[/red] {e}")
    return typer.Exit(getattr(e, "exit_code", 1))


@app.command("up")
def up(
    nodes: int = typer.Option(3, "--nodes", min=1, max=16, help="how many nodes (agents)"),
    zones: str = typer.Option(
        "", "--zones", help="zones, comma-separated; nodes are spread over them in turn"
    ),
    dir: str = typer.Option(None, "--dir", envvar=ClientSettings.variable("dir"), help=DIR_HELP),
    netns: bool = typer.Option(
        False, "--netns", help="each node in a network namespace of its own (root)"
    ),
    backend: Backend = typer.Option(
        Backend.sqlite, "--backend", help="state store: sqlite (1 manager) or etcd (2 managers)"
    ),
    timeout: float = typer.Option(60.0, "--timeout", min=1, help="seconds to wait for the nodes"),
    plaintext: bool = typer.Option(
        False,
        "--plaintext",
        help="the data path (replica servers, engines) without TLS: benchmarks only",
    ),
) -> None:
    """Start a local cluster in the background: manager(s), one agent per node."""
    where = dir or default_dir()
    if plaintext:
        console.print(
            "[bold red]PLAINTEXT:[/] the data path of this cluster (replica servers, "
            "engines) runs without TLS or authentication (--plaintext). Benchmarks only."
        )
    try:
        cluster = LocalCluster.create(
            where,
            nodes=nodes,
            zones=[z for z in zones.split(",") if z.strip()],
            netns=netns,
            backend=backend.value,
            plaintext=plaintext,
        )
        cluster.up(timeout=timeout, progress=lambda msg: console.print(f"  {msg}"))
    except CargoholdError as e:
        raise _fail(e) from None
    tcp = cluster.api_tcp + (" inside the lab" if cluster.lab else "")
    managers = f", {len(cluster.managers)} managers on etcd" if cluster.etcd else ""
    console.print(
        f"cluster up: {nodes} node{'s' if nodes != 1 else ''}{managers}, manager at "
        f"{cluster.api} ({tcp}); try `cargohold status`"
    )
    console.print(f"  logs in {cluster.dir}/logs; stop it with `cargohold down`")
    if os.path.abspath(where) != os.path.abspath(os.path.expanduser("~/.cargohold")):
        # later commands find it by $CARGOHOLD_DIR (or --dir on each of them)
        console.print("  for the commands that follow, in this shell:")
        typer.echo(f"export {ClientSettings.variable('dir')}={shlex.quote(cluster.dir)}")


@app.command("down")
def down(
    dir: str = typer.Option(None, "--dir", envvar=ClientSettings.variable("dir"), help=DIR_HELP),
    purge: bool = typer.Option(False, "--purge", help="also remove the directory and its data"),
) -> None:
    """Stop the local cluster (agents, then managers, then etcd)."""
    where = dir or default_dir()
    try:
        try:
            stopped = LocalCluster.load(where).down(purge=purge)
        except NoCluster:
            if not purge:
                err_console.print(
                    f"[red]error:[/red] no local cluster in {where} (no cluster.json there): "
                    "give its directory with --dir or $CARGOHOLD_DIR",
                    soft_wrap=True,
                    highlight=False,
                )
                raise typer.Exit(EXIT_NOT_FOUND) from None
            stopped = []
            purge_dir(where)
    except CargoholdError as e:
        raise _fail(e) from None
    if stopped:
        console.print("stopped " + ", ".join(stopped))
    else:
        console.print(f"no cluster was running in {where}")
    if purge:
        console.print(f"removed {where}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _ago(ts: Any) -> str:
    if not isinstance(ts, int | float) or ts <= 0:
        return "-"
    return f"{max(0.0, time.time() - ts):.1f}s ago"


def _print_table(api: str, st: dict[str, Any], nodes: list[dict[str, Any]], local: Any) -> None:
    leader = st.get("leader")
    console.print(
        f"[bold]cargohold[/bold] at {api} — backend {st.get('backend', '?')}, "
        f"leader {leader if leader not in (None, '', False) else 'none'}"
    )
    counts = st.get("nodes", {})
    console.print(
        f"nodes: {counts.get('up', 0)} up, {counts.get('down', 0)} down, "
        f"{counts.get('cordoned', 0)} cordoned"
    )
    pids = {n.name: n.pid for n in local.nodes.values()} if local else {}
    table = Table(show_edge=False, pad_edge=False)
    for col in ("NODE", "STATE", "ZONE", "ADDRESS", "REPLICA PORT", "HEARTBEAT"):
        table.add_column(col)
    if local:
        table.add_column("AGENT PID")
    colors = {"up": "green", "down": "red", "cordoned": "yellow"}
    for n in sorted(nodes, key=lambda n: str(n.get("name"))):
        state = str(n.get("state", "?"))
        row = [
            str(n.get("name")),
            f"[{colors.get(state, 'white')}]{state}[/]",
            n.get("zone") or "-",
            str(n.get("address") or "-"),
            str(n.get("replica_port") or "-"),
            _ago(n.get("heartbeat_at")),
        ]
        if local:
            row.append(str(pids.get(str(n.get("name"))) or "-"))
        table.add_row(*row)
    if nodes:
        console.print(table)
    if st.get("cluster_id"):
        console.print(f"cluster: {st['cluster_id']}")
    for n in nodes:  # an agent that refuses this manager (a cluster id mismatch, say)
        if n.get("error"):
            console.print(f"[red]node {escape(str(n.get('name')))}:[/red] {escape(n['error'])}")
    v = st.get("volumes", {})
    console.print(
        f"volumes: {v.get('total', 0)} (healthy {v.get('healthy', 0)}, degraded "
        f"{v.get('degraded', 0)}, faulted {v.get('faulted', 0)}), {v.get('attached', 0)} attached"
    )
    console.print(
        f"capacity: {_human(st.get('allocated_bytes', 0))} allocated of "
        f"{_human(st.get('capacity_bytes', 0))}"
    )
    if local:
        procs = ", ".join(
            f"{p.label} {'pid ' + str(p.pid) if p.running() else 'not running'}"
            for p in [*([local.etcd] if local.etcd else []), *local.managers]
        )
        console.print(f"local cluster in {local.dir}: {procs}")


@app.command("status")
def status(
    dir: str = typer.Option(None, "--dir", envvar=ClientSettings.variable("dir"), help=DIR_HELP),
    api: str = typer.Option(
        None,
        "--api",
        envvar=ClientSettings.variable("api"),
        help="a manager: http://HOST:PORT or unix:/PATH",
    ),
    output: Output = typer.Option(Output.table, "--output", "-o", help="format"),
) -> None:
    """Show the cluster: nodes, volumes by robustness, capacity."""
    local = None
    try:
        if api is None:
            local = LocalCluster.load(dir or default_dir())
            api = local.api_answering()
        creds = local.credentials if local is not None else ClientCredentials.find(dir)
        st = get_json(api, "/api/v1/status", credentials=creds)
        nodes = get_json(api, "/api/v1/nodes", credentials=creds)
    except CargoholdError as e:
        raise _fail(e) from None
    if output is Output.table:
        _print_table(api, st, nodes, local)
        return
    doc = {"api": api, "status": st, "nodes": nodes}
    if local is not None:
        doc["local"] = local.to_json()
    if output is Output.json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        import yaml

        typer.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())
