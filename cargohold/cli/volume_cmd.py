"""``cargohold volume ...``: create, attach, grow, clone and delete volumes through the manager.

    cargohold volume create data --size 10GiB --replicas 3
    DEV=$(cargohold volume attach data --node node-1)     # prints nbd://HOST:PORT/data
    cargohold volume get data --wait-healthy               # after a node came back
    cargohold volume clone data data-copy --snapshot before-upgrade
    cargohold volume scrub data          # verify every replica now, repair what rotted
    cargohold volume recover-epoch data  # a volume fenced by a bogus epoch
    cargohold volume detach data && cargohold volume delete data

``attach`` without ``--node`` picks, among the nodes that are up (not down, not cordoned),
the first by name that holds one of the volume's replicas (its engine then reads locally),
else the first by name; a volume attached already stays where it is.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    age,
    console,
    err_console,
    fields,
    handle_errors,
    human_size,
    operation_progress,
    progress,
    render,
    say,
    styled,
    table,
    wide,
)
from cargohold.cli.units import positive_size
from cargohold.cli.volume_qos import qos_options, qos_text
from cargohold.control.client import ManagerClient, volume_detached
from cargohold.errors import ConfigError

volume_app = typer.Typer(help="Create, attach, expand, clone and delete volumes.")
app.add_typer(volume_app, name="volume", no_args_is_help=True)

VOLUME_FIELDS = (
    "name",
    "size_bytes",
    "state",
    "robustness",
    "replicas_wanted",
    "attached_node",
    "endpoint",
    "nbd_clients",
    "epoch",
    "generation",
    "reclaim_policy",
    "zone_spread",
    "node_tags",
    "disk_tags",
    "stale_replica_timeout",
    "source",
    "created_at",
    "last_scrub",
    "qos",
    "encryption",
    "error",
)
GOOD_REPLICA_STATES = ("running", "stopped")


class ReclaimPolicy(StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"


def replica_count(v: dict[str, Any]) -> str:
    good = sum(1 for r in v.get("replicas", ()) if r.get("state") in GOOD_REPLICA_STATES)
    text = f"{good}/{v.get('replicas_wanted', '?')}"
    return text if good >= (v.get("replicas_wanted") or 0) else f"[yellow]{text}[/yellow]"


VOLUME_COLUMNS = ("NAME", "SIZE", "REPLICAS", "STATE", "ROBUSTNESS", "NODE", "ENDPOINT")
NARROW_DROPS = ("ROBUSTNESS", "REPLICAS", "SIZE")  # left out in this order when too wide


def print_volumes(vols: list[dict[str, Any]]) -> None:
    """The volumes, one a line. The ENDPOINT (what users copy) is never cut: when the
    terminal is too narrow, ROBUSTNESS, then REPLICAS, then SIZE are left out, and a line
    on stderr says so (-o wide keeps them all)."""
    rows = [
        (
            escape(v["name"]),
            human_size(v.get("size_bytes")),
            replica_count(v),
            styled(v.get("state")),
            styled(v.get("robustness")),
            escape(v.get("attached_node") or ""),
            str(v.get("endpoint") or ""),  # plain text (below), not markup
        )
        for v in sorted(vols, key=lambda v: v["name"])
    ]
    # cells as Text: no markup or emoji codes read into an endpoint (":1234:" in IPv6)
    cells = [
        [Text(c) if i == len(r) - 1 else Text.from_markup(c, emoji=False) for i, c in enumerate(r)]
        for r in rows
    ]
    columns = list(VOLUME_COLUMNS)
    dropped: list[str] = []

    def natural(cols: list[str]) -> int:
        """The table's width with no cell wrapped: cells, padding and borders."""
        widths = [
            max([len(c)] + [row[VOLUME_COLUMNS.index(c)].cell_len for row in cells]) for c in cols
        ]
        return sum(widths) + 3 * len(cols) + 1

    if not wide():
        for c in NARROW_DROPS:
            if natural(columns) <= console.width:
                break
            columns.remove(c)
            dropped.append(c)
    t = Table(header_style="bold")
    for c in columns:
        if c == "ENDPOINT":
            t.add_column(c, no_wrap=True, overflow="ignore")
        else:
            t.add_column(c, overflow="fold")
    for row in cells:
        t.add_row(*(row[VOLUME_COLUMNS.index(c)] for c in columns))
    if wide():  # as wide as it takes, past the terminal's width
        Console(width=max(console.width, natural(columns))).print(t)
    else:
        console.print(t)
    if dropped:
        err_console.print(
            f"({', '.join(dropped)} left out at {console.width} columns: -o wide shows every "
            "column, -o json everything)",
            highlight=False,
        )


def print_replicas(replicas: list[dict[str, Any]]) -> None:
    rows = []
    for r in replicas:
        prog = r.get("rebuild_progress")
        rows.append(
            (
                escape(r["id"]),
                escape(r.get("node", "")),
                escape(r.get("disk", "")),
                escape(r.get("mode") or ""),
                styled(r.get("state")),
                str(r.get("generation", "")),
                f"{prog:.0%}" if isinstance(prog, int | float) else "",
            )
        )
    table(("REPLICA", "NODE", "DISK", "MODE", "STATE", "GENERATION", "REBUILT"), rows)


def scrub_text(s: dict[str, Any] | None) -> str:
    """``last_scrub`` for people: '2h ago: 262144 blocks checked, 0 bad'."""
    if not s:
        return "never"
    text = f"{age(s.get('ended_at'))}: {s.get('checked_blocks', 0)} blocks checked, "
    text += f"{s.get('found', 0)} bad"
    if s.get("found"):
        text += f", {s.get('repaired', 0)} repaired, {s.get('unrepaired', 0)} not repaired"
    text += diverged_text(s)
    return text


def diverged_text(s: dict[str, Any]) -> str:
    """The cross-replica comparison of a scrub: '; 3 replicas compared: 0 blocks differ'."""
    n = s.get("compared_replicas", 0)
    if not n or n < 2:
        return "; replicas not compared (fewer than 2 current)"
    text = f"; {n} replicas compared: {s.get('diverged_found', 0)} blocks differ"
    if s.get("diverged_found"):
        text += (
            f", {s.get('diverged_repaired', 0)} repaired, "
            f"{s.get('diverged_unrepaired', 0)} not repaired"
        )
    return text


def encryption_text(enc: Any) -> str:
    """``encryption`` for people: 'file:default, id 3f2a…' ('' for a plain volume)."""
    if not isinstance(enc, dict):
        return ""
    text = f"{enc.get('provider')}:{enc.get('key_ref')}, id {enc.get('id')}"
    if enc.get("shredded"):
        return f"{text} [red](key destroyed)[/red]"
    gens = [g for g in enc.get("generations") or [] if isinstance(g, dict)]
    if len(gens) > 1 or (gens and gens[0].get("generation") != 1):
        kept = "; ".join(
            f"{g.get('generation')}" + (f" for {g['kept_for']}" if g.get("kept_for") else "")
            for g in gens
        )
        text += f", data key generations {kept}"
    return text + rotation_text(enc.get("rotation"))


def rotation_text(rot: Any) -> str:
    """A data-key rotation for people: ', rotation to generation 2: 40% (running)'."""
    if not isinstance(rot, dict):
        return ""
    state, g = rot.get("state"), rot.get("generation")
    if state == "finished":
        return f", rotated to generation {g}"
    if state == "waiting":
        return f", rotation to generation {g} waiting (runs at the next attach)"
    p = rot.get("progress")
    done = f"{100 * p:.0f}%" if isinstance(p, float | int) else "starting"
    err = f" [red]{rot['error']}[/red]" if rot.get("error") else ""
    return f", rotation to generation {g}: {done} ({rot.get('engine_state') or state}){err}"


def clients_text(clients: Any) -> str:
    """``nbd_clients`` for people: '2: unix, 10.0.0.9' ('' when none)."""
    if not isinstance(clients, list) or not clients:
        return ""
    peers = [str(c.get("peer", "?")) for c in clients if isinstance(c, dict)]
    return f"{len(peers)}: {', '.join(peers)}"


def print_volume(v: dict[str, Any]) -> None:
    shown = {**v, "last_scrub": scrub_text(v.get("last_scrub")), "qos": qos_text(v.get("qos"))}
    shown["encryption"] = encryption_text(v.get("encryption"))
    if "nbd_clients" in v:
        shown["nbd_clients"] = clients_text(v["nbd_clients"])
    fields(shown, VOLUME_FIELDS)
    if v.get("standby"):
        from cargohold.cli.standby_view import print_standby

        print_standby(v["standby"])
    if v.get("replicas"):
        print_replicas(v["replicas"])


def health(v: dict[str, Any]) -> float:
    """0..1: how far the volume is from all its wanted replicas being current."""
    wanted = v.get("replicas_wanted") or 1
    score = 0.0
    for r in v.get("replicas", ()):
        if r.get("state") in GOOD_REPLICA_STATES:
            score += 1.0
        elif r.get("state") == "rebuilding":
            score += float(r.get("rebuild_progress") or 0.0)
    return min(score / wanted, 1.0)


def _state_text(v: dict[str, Any]) -> str:
    return f"{v.get('state')}, {v.get('robustness')}"


@volume_app.command("create")
@handle_errors
@qos_options  # --max-iops ... --min-iops (cli/volume_qos.py), as ``qos``
def create(
    name: str,
    size: str = typer.Option(..., "--size", help="e.g. 10GiB (a multiple of 4 KiB)"),
    replicas: int | None = typer.Option(None, "--replicas", min=1, max=16, help="default 3"),
    zone_spread: bool = typer.Option(
        True, "--zone-spread/--no-zone-spread", help="replicas in distinct zones"
    ),
    node_tag: list[str] | None = typer.Option(None, "--node-tag", help="only nodes with tag"),
    disk_tag: list[str] | None = typer.Option(None, "--disk-tag", help="only disks with tag"),
    reclaim_policy: ReclaimPolicy | None = typer.Option(
        None, "--reclaim-policy", help="Delete (default) or Retain the data on delete"
    ),
    stale_replica_timeout: float | None = typer.Option(
        None, "--stale-replica-timeout", min=0, help="seconds a replica may be away (30)"
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until replicas are on disk"),
    tenant: str | None = typer.Option(
        None, "--tenant", help="the admin: create it for this tenant (default: the caller's)"
    ),
    label: list[str] | None = typer.Option(
        None,
        "--label",
        help="KEY=VALUE (repeatable): recurring jobs select volumes by label; "
        "recurring-job.cargohold.io/JOB=enabled attaches job JOB",
    ),
    qos: dict[str, Any] | None = None,  # --max-iops ... (cli/volume_qos.py: qos_options)
    encrypted: bool = typer.Option(
        False, "--encrypted", help="encrypt at rest with a new data key (docs/keys.md)"
    ),
    key: str | None = typer.Option(
        None, "--key", help="with --encrypted: the key-encryption key's name (default: default)"
    ),
    kms_key: str | None = typer.Option(
        None, "--kms-key", help="with --encrypted: wrap the data key with this KMS key id"
    ),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Create a volume; its replicas are placed by the manager. QoS limits (docs/qos.md)
    can be changed later with ``volume update``. ``--encrypted``: encrypted at rest, its
    size rounded up to whole 256 KiB groups (docs/keys.md)."""
    from cargohold.cli.snapshot_cmd import parse_labels

    qos = {k: v for k, v in (qos or {}).items() if v is not None}
    size_bytes = positive_size(size, "--size")
    with ManagerClient.discover(api, dir) as c:
        vol = c.create_volume(
            name,
            size_bytes,
            replicas=replicas,
            zone_spread=zone_spread,
            node_tags=node_tag or None,
            disk_tags=disk_tag or None,
            reclaim_policy=reclaim_policy.value if reclaim_policy else None,
            stale_replica_timeout=stale_replica_timeout,
            tenant=tenant,
            labels=parse_labels(label) or None,
            qos=qos or None,
            encrypted=encrypted or None,
            key=key,
            kms_key=kms_key,
        )
        if wait:
            with progress(f"creating {name}") as update:

                def on(v: dict[str, Any]) -> None:
                    on_disk = sum(r.get("state") != "pending" for r in v.get("replicas", ()))
                    update(None, f"{on_disk}/{v.get('replicas_wanted')} replicas on disk")

                vol = c.wait_placed(name, timeout, on)
    where = ", ".join(f"{r.get('node')}/{r.get('disk')}" for r in vol.get("replicas", ()))
    render(
        vol,
        output,
        lambda v: say(
            f"volume [bold]{escape(name)}[/bold] created: {human_size(v.get('size_bytes'))}, "
            f"replicas on {escape(where or 'nodes to be chosen')}"
        ),
    )


@volume_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List the volumes."""
    with ManagerClient.discover(api, dir) as c:
        render(c.volumes(), output, print_volumes)


@volume_app.command("get")
@handle_errors
def get(
    name: str,
    wait_healthy: bool = typer.Option(
        False, "--wait-healthy", help="first wait until every wanted replica is current"
    ),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Show a volume and its replicas. --wait-healthy waits until every wanted replica is
    current (a detached volume that no engine checked yet stays ``unknown``)."""
    with ManagerClient.discover(api, dir) as c:
        if wait_healthy:
            with progress(f"waiting for {name} to be healthy") as update:
                vol = c.wait_healthy(name, timeout, lambda v: update(health(v), _state_text(v)))
        else:
            vol = c.volume(name)
    render(vol, output, print_volume)


def default_node(c: ManagerClient, vol: dict[str, Any]) -> str:
    """Where ``attach`` goes without --node (see the module docstring)."""
    if vol.get("attached_node"):
        return str(vol["attached_node"])
    up = sorted(n["name"] for n in c.nodes() if n.get("state") == "up")
    if not up:
        raise ConfigError(f"no node is up to attach volume {vol['name']} to; give --node")
    holders = {r.get("node") for r in vol.get("replicas", ())}
    return next((n for n in up if n in holders), up[0])


@volume_app.command("attach")
@handle_errors
def attach(
    name: str,
    node: str | None = typer.Option(
        None, "--node", help="default: the first up node holding a replica, else the first up node"
    ),
    force: bool = typer.Option(False, "--force", help="take over from a node still up"),
    read_only: bool = typer.Option(False, "--read-only", help="NBD clients may only read"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Attach a volume to a node and print its NBD URI alone, for scripts (-o json|yaml:
    the volume instead)."""
    with ManagerClient.discover(api, dir) as c:
        if node is None:
            node = default_node(c, c.volume(name))
        c.attach(name, node, force=force, read_only=read_only)
        with progress(f"attaching {name} to {node}") as update:
            vol = c.wait_attached(name, node, timeout, lambda v: update(None, _state_text(v)))
    if output is Format.TABLE:
        if err_console.is_terminal:
            err_console.print(f"volume [bold]{escape(name)}[/bold] attached to {escape(node)}")
        typer.echo(vol["endpoint"])
    else:
        render(vol, output, print_volume)


detached = volume_detached  # "detached" is the client's definition (the name stays)


@volume_app.command("detach")
@handle_errors
def detach(
    name: str,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until its engine stopped"),
    force: bool = typer.Option(
        False, "--force", help="detach even while NBD clients are connected (their I/O fails)"
    ),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Detach a volume (its engine flushes and stops). Refused (exit 5) while NBD clients
    are connected, e.g. a mounted filesystem: unmount and disconnect them, or --force."""
    with ManagerClient.discover(api, dir) as c:
        vol = c.detach(name, force=force)
        if wait:
            with progress(f"detaching {name}") as update:
                vol = c.wait_detached(name, timeout, lambda v: update(None, _state_text(v)))
    render(vol, output, lambda v: say(f"volume [bold]{escape(name)}[/bold] detached"))


@volume_app.command("expand")
@handle_errors
def expand(
    name: str,
    size: str = typer.Option(..., "--size", help="the new size, e.g. 20GiB (volumes only grow)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the operation"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Grow a volume (an operation on its engine)."""
    size_bytes = positive_size(size, "--size")
    with ManagerClient.discover(api, dir) as c:
        op = c.expand(name, size_bytes)
        if wait:
            with progress(f"expanding {name}") as update:
                op = c.wait_operation(op["id"], timeout, operation_progress(update))
    done = "expanded" if wait else f"expanding (operation {op['id']})"
    render(
        op,
        output,
        lambda o: say(f"volume [bold]{escape(name)}[/bold] {done} to {human_size(size_bytes)}"),
    )


@volume_app.command("delete")
@handle_errors
def delete(
    name: str,
    purge: bool = typer.Option(False, "--purge", help="also remove a Retain volume's data"),
    shred: bool = typer.Option(
        False,
        "--shred",
        help="encrypted volumes: destroy the data key first (its data, snapshots and backups "
        "become unreadable, for good), then delete it",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until it is gone"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Delete a detached volume. With reclaim policy Retain, its data stays (state
    released) until ``delete --purge``. ``--shred``: crypto-shredding (docs/keys.md)."""
    with ManagerClient.discover(api, dir) as c:
        vol = c.delete_volume(name, purge=purge, shred=shred)
        released = vol.get("state") == "released"
        if wait and not released:
            with progress(f"deleting {name}") as update:
                update(None, "")
                c.wait_gone(name, timeout)
    if released:
        msg = "released: its data is kept (reclaim policy Retain); `delete --purge` removes it"
    else:
        msg = "deleted" if wait else "being deleted"
        msg = f"shredded (its data key destroyed) and {msg}" if shred else msg
    render(vol, output, lambda v: say(f"volume [bold]{escape(name)}[/bold] {msg}"))


@volume_app.command("clone")
@handle_errors
def clone(
    source: str,
    name: str,
    snapshot: str | None = typer.Option(
        None, "--snapshot", help="clone this snapshot (default: the volume now)"
    ),
    size: str | None = typer.Option(None, "--size", help="default: the source's size"),
    replicas: int | None = typer.Option(None, "--replicas", min=1, max=16, help="default 3"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until the data is copied"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Create a volume NAME with the data of SOURCE (or of one of its snapshots)."""
    with ManagerClient.discover(api, dir) as c:
        size_bytes = positive_size(size, "--size") if size else int(c.volume(source)["size_bytes"])
        src: dict[str, Any] = {"volume": source}
        if snapshot:
            src["snapshot"] = snapshot
        vol = c.create_volume(name, size_bytes, replicas=replicas, source=src)
        if wait:
            label = f"cloning {source}{'@' + snapshot if snapshot else ''} into {name}"
            with progress(label) as update:
                op = c.find_operation(name, "clone")
                if op is not None:
                    c.wait_operation(op["id"], timeout, operation_progress(update))
                vol = c.wait_volume(
                    name,
                    lambda v: v.get("state") != "creating",
                    timeout,
                    lambda v: update(None, str(v.get("state"))),
                )
    origin = f"{source}@{snapshot}" if snapshot else source
    msg = "cloned from" if wait else "being cloned from"
    render(
        vol,
        output,
        lambda v: say(f"volume [bold]{escape(name)}[/bold] {msg} {escape(origin)}"),
    )
