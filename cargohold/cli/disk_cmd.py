"""``cargohold disk ...``: the disks replicas are placed on, and adding one to a node.

cargohold disk list --node node-1
cargohold disk add node-1 /mnt/ssd1 --capacity 500GiB --tag ssd
cargohold disk drain node-1 disk-1 && cargohold disk remove node-1 disk-1
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    Format,
    err_console,
    handle_errors,
    human_size,
    render,
    say,
    table,
    tags,
)
from cargohold.cli.units import positive_size
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError, InvalidArgument

disk_app = typer.Typer(help="List disks, add them to nodes, drain and remove them.")
app.add_typer(disk_app, name="disk", no_args_is_help=True)


def print_disks(disks: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(d.get("node", "")),
            escape(d["name"]),
            escape(d.get("path", "")),
            human_size(d.get("capacity_bytes")),
            escape(tags(d.get("tags"))),
            "yes" if d.get("schedulable", True) else "[yellow]no[/yellow]",
        )
        for d in sorted(disks, key=lambda d: (d.get("node", ""), d["name"]))
    ]
    table(("NODE", "DISK", "PATH", "CAPACITY", "TAGS", "SCHEDULABLE"), rows)


def next_disk_name(disks: list[dict[str, Any]]) -> str:
    """The first ``disk-<i>`` not used on the node (local clusters start with disk-0)."""
    used = {d.get("name") for d in disks}
    i = 0
    while f"disk-{i}" in used:
        i += 1
    return f"disk-{i}"


@disk_app.command("list")
@handle_errors
def list_(
    node: str | None = typer.Option(None, "--node", help="only this node's disks"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """List the disks of every node (or of one)."""
    with ManagerClient.discover(api, dir) as c:
        render(c.disks(node), output, print_disks)


@disk_app.command("add")
@handle_errors
def add(
    node: str,
    path: str = typer.Argument(..., help="absolute path of the directory on the node"),
    capacity: str = typer.Option(..., "--capacity", help="bytes to place there, e.g. 100GiB"),
    name: str | None = typer.Option(None, "--name", help="disk name (default: next disk-N)"),
    tag: list[str] | None = typer.Option(None, "--tag", help="disk tag (repeatable)"),
    timeout: float = typer.Option(
        60.0, "--timeout", min=0, help="seconds to wait for the node's agent to check the path"
    ),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Add a disk for replicas: an existing directory on the node, ideally the mount point
    of a disk of its own. Waits until the node's agent checked the path: refused (exit 2,
    nothing added) when it is no directory there, a warning when it is not a mount point."""
    if not os.path.isabs(path):
        raise ConfigError(f"give the disk's absolute path on node {node}, not {path!r}")
    capacity_bytes = positive_size(capacity, "--capacity")
    with ManagerClient.discover(api, dir) as c:
        if name is None:
            name = next_disk_name(c.disks(node))
        disk = c.add_disk(node, name, path, capacity_bytes, tag or [])
        disk = _checked(c, node, name, disk, timeout)
    if disk.get("warning"):
        err_console.print(
            f"[yellow]warning:[/yellow] {escape(disk['warning'])}", soft_wrap=True, highlight=False
        )
    render(
        disk,
        output,
        lambda d: say(
            f"disk [bold]{escape(d['name'])}[/bold] added to node {escape(node)}: "
            f"{escape(d.get('path', path))}, {human_size(d.get('capacity_bytes'))}"
        ),
    )


def _checked(
    c: ManagerClient, node: str, name: str, disk: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """The disk once the node's agent looked at its path (``checked``; a manager that
    does not report it: at once). A path the agent refuses: the disk is removed again and
    the refusal raised (InvalidArgument, exit 2)."""
    if disk.get("checked", True):
        return disk

    def fetch() -> dict[str, Any]:
        return next((d for d in c.disks(node) if d.get("name") == name), disk)

    got = c.poll(
        fetch,
        lambda d: bool(d.get("checked", True)),
        timeout,
        None,
        f"node {node}'s agent to check {disk.get('path')} (is the node up?)",
    )
    if got.get("error"):
        c.remove_disk(node, name)
        raise InvalidArgument(f"disk {name} not added: {got['error']}")
    return got


@disk_app.command("drain")
@handle_errors
def drain(
    node: str, disk: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Place nothing new on a disk and rebuild its replicas elsewhere (then remove it)."""
    with ManagerClient.discover(api, dir) as c:
        d = c.drain_disk(node, disk)
    render(
        d,
        output,
        lambda _: say(f"disk [bold]{escape(disk)}[/bold] of node {escape(node)} draining"),
    )


@disk_app.command("remove")
@handle_errors
def remove(node: str, disk: str, api: str | None = API, dir: str | None = DIR) -> None:
    """Remove an empty disk from a node (refused while replicas live on it: drain it first)."""
    with ManagerClient.discover(api, dir) as c:
        c.remove_disk(node, disk)
    say(f"disk [bold]{escape(disk)}[/bold] removed from node {escape(node)}")
