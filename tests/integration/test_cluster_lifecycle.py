"""The volume lifecycle through the `cargohold` CLI, against a local cluster of real
processes (manager, three agents, their replica servers and engines), once per state-store
backend: SQLite (one manager) and etcd (two managers, one leader; marked `long`).

Data goes through the engines' NBD endpoints with qemu-io, and is read back and compared.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.nbd_clients import pattern_ok, qemu_io
from tests.support.polling import wait_until

MiB = 1 << 20


# etcd's variant is `long`: the default run covers etcd through the launcher's and the
# cluster identity's tests, and this one, the slowest of the suite, through SQLite
@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.long)])
def cluster(request) -> Iterator[tuple[LocalCluster, Path]]:  # type: ignore[no-untyped-def]
    d = Path(f"/tmp/chl-{request.param}-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3, backend=request.param).up(timeout=90)
    try:
        yield c, d
    finally:
        c.down(purge=True)


def test_volume_lifecycle_through_the_cli(cluster: tuple[LocalCluster, Path]) -> None:
    _, d = cluster
    nodes = js(d, "node", "list")
    assert [(n["name"], n["state"]) for n in nodes] == [  # type: ignore[index]
        ("node-1", "up"),
        ("node-2", "up"),
        ("node-3", "up"),
    ]
    cli(d, "volume", "create", "data", "--size", "64MiB", "--replicas", "3")
    vol = js(d, "volume", "get", "data")
    assert vol["replicas_wanted"] == 3 and vol["size_bytes"] == 64 * MiB  # type: ignore[index]
    assert len({r["node"] for r in vol["replicas"]}) == 3  # type: ignore[index]

    # attach: the URI alone on stdout, then real data through it
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    assert uri.startswith("nbd://") and uri.endswith("/data"), uri
    qemu_io(uri, "write -P 0x5a 0 4M")
    qemu_io(uri, "write -P 0x33 32M 1M")
    vol = js(d, "volume", "get", "data")
    assert vol["state"] == "attached" and vol["attached_node"] == "node-1"  # type: ignore[index]
    assert vol["endpoint"] == uri  # type: ignore[index]
    assert wait_until(
        lambda: js(d, "volume", "get", "data")["robustness"] == "healthy", 60, "healthy", 0.2
    )

    # snapshot, then change the data after it
    cli(d, "snapshot", "create", "data", "s1")
    snaps = js(d, "snapshot", "list", "data")
    assert [(s["name"], s["state"]) for s in snaps] == [("s1", "ready")]  # type: ignore[index]
    qemu_io(uri, "write -P 0x77 0 1M")

    # online expansion: the engine grows, the NBD size follows
    cli(d, "volume", "expand", "data", "--size", "96MiB")
    assert js(d, "volume", "get", "data")["size_bytes"] == 96 * MiB  # type: ignore[index]
    info = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=30)
    assert info.stdout.strip() == str(96 * MiB), info.stdout + info.stderr

    # clone the snapshot into a new volume, attach it elsewhere, compare the bytes
    cli(d, "volume", "clone", "data", "copy", "--snapshot", "s1", timeout=180)
    copy_uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
    assert pattern_ok(copy_uri, 0, 4 * MiB, 0x5A)
    assert pattern_ok(copy_uri, 32 * MiB, MiB, 0x33)
    assert pattern_ok(uri, 0, MiB, 0x77)

    # one volume per node attachment; a second attach elsewhere is refused
    p = cli(d, "volume", "attach", "data", "--node", "node-3", check=False)
    assert p.returncode != 0 and "attached to node node-1" in p.stderr

    # revert needs a detached volume; after it, the snapshot's bytes are back
    p = cli(d, "snapshot", "revert", "data", "s1", check=False)
    assert p.returncode != 0 and "detach" in p.stderr
    cli(d, "volume", "detach", "data")
    cli(d, "snapshot", "revert", "data", "s1", timeout=180)
    uri = cli(d, "volume", "attach", "data", "--node", "node-3").stdout.strip()
    assert pattern_ok(uri, 0, 4 * MiB, 0x5A)
    vol = js(d, "volume", "get", "data")
    assert vol["epoch"] >= 3  # type: ignore[index]  # every engine got a new epoch

    # a disk added through the API is served by the node's replica server
    extra = d / "nodes" / "node-1" / "fast-disk"
    extra.mkdir()  # a disk is an existing directory (the agent creates none)
    cli(
        d,
        "disk",
        "add",
        "node-1",
        str(extra),
        "--capacity",
        "1GiB",
        "--name",
        "fast",
        "--tag",
        "ssd",
    )
    cli(d, "volume", "create", "quick", "--size", "16MiB", "--replicas", "1", "--disk-tag", "ssd")
    rep = js(d, "volume", "get", "quick")["replicas"][0]  # type: ignore[index]
    assert (rep["node"], rep["disk"]) == ("node-1", "fast")
    quick = cli(d, "volume", "attach", "quick", "--node", "node-2").stdout.strip()
    qemu_io(quick, "write -P 0x44 0 1M")
    assert pattern_ok(quick, 0, MiB, 0x44)
    assert (extra / "replicas" / rep["id"]).is_dir()
    cli(d, "volume", "detach", "quick")
    cli(d, "volume", "delete", "quick")

    # nodes: cordon shows, uncordon clears
    cli(d, "node", "cordon", "node-2")
    assert js(d, "node", "get", "node-2")["state"] == "cordoned"  # type: ignore[index]
    cli(d, "node", "uncordon", "node-2")

    # clean up: detach, delete, nothing left
    cli(d, "volume", "detach", "data")
    cli(d, "volume", "detach", "copy")
    cli(d, "snapshot", "delete", "data", "s1")
    assert js(d, "snapshot", "list", "data") == []
    cli(d, "volume", "delete", "data")
    cli(d, "volume", "delete", "copy")
    assert js(d, "volume", "list") == []
    st = js(d, "status")
    assert st["status"]["nodes"]["up"] == 3  # type: ignore[index]
    assert [n["state"] for n in st["nodes"]] == ["up"] * 3  # type: ignore[index]


@pytest.fixture
def cluster4() -> Iterator[tuple[LocalCluster, Path]]:
    d = Path(f"/tmp/chl-4-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=4).up(timeout=90)
    try:
        yield c, d
    finally:
        c.down(purge=True)


def _replica_dirs(d: Path, volume: str) -> list[Path]:
    return sorted(d.glob(f"nodes/*/disk-0/replicas/{volume}-r*"))


def _replica_server(c: LocalCluster, node: str) -> int | None:
    for pid in c.node_processes(node):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"replica-server" in cmd:
            return pid
    return None


def test_clone_retain_drain_and_a_killed_replica_server(
    cluster4: tuple[LocalCluster, Path],
) -> None:
    """On four real nodes: a clone of a whole volume in use, Retain then purge, a drain
    that moves a replica of an attached volume, and a replica server killed with SIGKILL
    that its agent restarts (the engine then rebuilds what it missed)."""
    c, d = cluster4
    cli(d, "volume", "create", "data", "--size", "64MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x5a 0 4M")

    # clone the whole volume (no --snapshot) while it stays attached and in use
    cli(d, "volume", "clone", "data", "whole", timeout=180)
    snaps = js(d, "snapshot", "list", "data")
    assert [s["name"].startswith("clone-whole-") for s in snaps] == [True]  # type: ignore[index]
    qemu_io(uri, "write -P 0x66 0 1M")  # after the clone: not in it
    whole = cli(d, "volume", "attach", "whole", "--node", "node-2").stdout.strip()
    assert pattern_ok(whole, 0, 4 * MiB, 0x5A)
    assert pattern_ok(uri, 0, MiB, 0x66)
    cli(d, "volume", "detach", "whole")
    cli(d, "volume", "delete", "whole")
    # all of it over mutual TLS (cargohold up's default): the clone's engine read the
    # source replica with the manager's read grant; no agent ran its data path in clear
    for node in c.nodes.values():
        log = Path(node.log).read_text()
        assert "PLAINTEXT" not in log and "--ca-dir" in log, node.name
        # with --ca-dir the agent issues engines' certificates itself: it never asks the
        # manager (which holds no CA here) and so logs no failure to get one
        assert "no certificate for the engine" not in log, node.name

    # Retain: delete keeps the replicas on disk (released), purge removes them
    cli(d, "volume", "create", "keep", "--size", "16MiB", "--reclaim-policy", "Retain")
    dirs = wait_until(
        lambda: len(_replica_dirs(d, "keep")) == 3 and _replica_dirs(d, "keep"), 60, "3", 0.2
    )
    cli(d, "volume", "delete", "keep")
    assert js(d, "volume", "get", "keep")["state"] == "released"  # type: ignore[index]
    time.sleep(2)  # a few reconciler passes and heartbeats: nothing is deleted
    assert _replica_dirs(d, "keep") == dirs
    p = cli(d, "volume", "attach", "keep", "--node", "node-1", check=False)
    assert p.returncode == 5 and "released" in p.stderr
    cli(d, "volume", "delete", "keep", "--purge")
    wait_until(
        lambda: not _replica_dirs(d, "keep"), 60, "the purged replicas to leave the disks", 0.2
    )
    assert "keep" not in {v["name"] for v in js(d, "volume", "list")}  # type: ignore[union-attr]

    # drain a node holding a replica of the attached volume: it moves, the data stays
    holders = {r["node"] for r in js(d, "volume", "get", "data")["replicas"]}  # type: ignore[index]
    victim = next(n for n in sorted(holders) if n != "node-1")
    cli(d, "node", "drain", victim, "--wait", "--timeout", "120", timeout=180)
    vol = wait_until(
        lambda: (
            (v := js(d, "volume", "get", "data"))["robustness"] == "healthy"  # type: ignore[index]
            and len(v["replicas"]) == 2  # type: ignore[index]
            and v
        ),
        120,
        "the drained replica's successor to be rebuilt",
        0.2,
    )
    assert victim not in {r["node"] for r in vol["replicas"]}  # type: ignore[index]
    assert {r["mode"] for r in vol["replicas"]} == {"RW"}  # type: ignore[index]
    assert js(d, "node", "get", victim)["state"] == "cordoned"  # type: ignore[index]
    assert not list(d.glob(f"nodes/{victim}/disk-0/replicas/data-r*"))
    assert pattern_ok(uri, 0, MiB, 0x66) and pattern_ok(uri, MiB, 3 * MiB, 0x5A)
    cli(d, "node", "uncordon", victim)

    # SIGKILL a replica server of the volume: its agent restarts it on the same port, the
    # engine's dropped replica is re-added and rebuilt, and the data is intact
    other = next(
        r["node"]
        for r in js(d, "volume", "get", "data")["replicas"]  # type: ignore[index]
        if r["node"] != "node-1"
    )
    pid = _replica_server(c, other)
    assert pid is not None
    os.kill(pid, 9)
    qemu_io(uri, "write -P 0x99 8M 1M")  # written while that replica is gone
    again = wait_until(
        lambda: (p := _replica_server(c, other)) not in (None, pid) and p,
        60,
        "the agent to restart the replica server",
        0.2,
    )
    wait_until(
        lambda: (
            f"restarted the replica server (pid {again})"
            in (d / "logs" / f"{other}.log").read_text()
        ),
        60,
        "the agent to log the restart",
        0.2,
    )
    wait_until(
        lambda: {r["mode"] for r in js(d, "volume", "get", "data")["replicas"]} == {"RW"},
        90,
        "the replica to be rebuilt",
        0.2,
    )
    assert pattern_ok(uri, 8 * MiB, MiB, 0x99) and pattern_ok(uri, 0, MiB, 0x66)
    cli(d, "volume", "detach", "data")
    cli(d, "volume", "delete", "data")
    wait_until(lambda: js(d, "volume", "list") == [], 60, "every volume to be deleted", 0.2)
