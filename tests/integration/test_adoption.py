"""Recovery from a lost state store (issue 14): the manager's records are gone for good,
the replicas are on the nodes' disks. A new store under the cluster's id
(``manager --init --cluster-id``), the replicas reported as orphans, ``volume adopt``
recreates the volumes from them, and the data written before reads back byte for byte
through a new engine at a higher epoch, snapshots included.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.launcher.cluster import LocalCluster, get_json
from tests.support.cli import cli, js
from tests.support.nbd_clients import pattern_ok, qemu_io
from tests.support.polling import wait_until

MiB = 1 << 20


@pytest.fixture
def cluster() -> Iterator[tuple[LocalCluster, Path]]:
    d = Path(f"/tmp/adopt-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=2, backend="sqlite", managers=1).up(timeout=90)
    try:
        yield c, d
    finally:
        c.down(purge=True)


def test_volumes_are_adopted_from_their_replicas_after_the_state_is_lost(
    cluster: tuple[LocalCluster, Path],
) -> None:
    c, d = cluster
    real = js(d, "status")["status"]["cluster_id"]  # type: ignore[index]
    cli(d, "volume", "create", "data", "--size", "16MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 0x5a 0 1M")
    cli(d, "snapshot", "create", "data", "s1")
    qemu_io(uri, "write -P 0x33 8M 64k")
    qemu_io(uri, "write -P 0x44 0 4k")  # after the snapshot: s1 still holds 0x5a there
    cli(d, "volume", "detach", "data")
    cli(d, "volume", "create", "logs", "--size", "8MiB", "--replicas", "1")
    uri = cli(d, "volume", "attach", "logs", "--node", "node-2").stdout.strip()
    qemu_io(uri, "write -P 0x77 0 64k")
    cli(d, "volume", "detach", "logs")
    for v in ("data", "logs"):
        wait_until(
            lambda v=v: js(d, "volume", "get", v)["state"] == "detached", 60, f"{v} detached", 0.2
        )
    old_epoch = js(d, "volume", "get", "data")["epoch"]  # type: ignore[index]

    # the store is lost for good; a new one is made under the cluster's id
    c.kill_manager("manager-1")
    lost = d / "lost"
    lost.mkdir()
    for f in d.glob("state.db*"):
        shutil.move(str(f), lost / f.name)
    c.start_manager("manager-1", init=True, cluster_id=real)
    assert get_json(c.api, "/api/v1/status")["cluster_id"] == real
    orphans = wait_until(
        lambda: (o := get_json(c.api, "/api/v1/orphans")) and len(o) == 3 and o,
        60,
        "the three replicas reported as orphans",
        0.2,
    )
    assert {o["volume"] for o in orphans} == {"data", "logs"}
    assert all(o["cluster_id"] == real and o["history"] for o in orphans), orphans
    assert get_json(c.api, "/api/v1/volumes") == []

    # a dry run says what would happen and writes nothing
    plan = js(d, "volume", "adopt", "data", "--dry-run")
    assert plan["dry_run"] and {r["role"] for r in plan["replicas"]} == {"current"}  # type: ignore[index]
    assert plan["snapshots"] == ["s1"]  # type: ignore[index]
    assert cli(d, "volume", "get", "data", check=False).returncode != 0

    out = cli(d, "volume", "adopt", "--all").stdout
    assert "volume data: adopted 2 replica(s)" in " ".join(out.split()), out
    vol = js(d, "volume", "get", "data")
    assert vol["state"] == "detached" and vol["reclaim_policy"] == "Retain"  # type: ignore[index]
    assert vol["replicas_wanted"] == 2 and vol["size_bytes"] == 16 * MiB  # type: ignore[index]
    assert [s["name"] for s in js(d, "snapshot", "list", "data")] == ["s1"]  # type: ignore[union-attr,index]
    wait_until(lambda: get_json(c.api, "/api/v1/orphans") == [], 60, "no orphans left", 0.2)
    kinds = [e["kind"] for e in get_json(c.api, "/api/v1/events")]
    assert kinds.count("volume-adopted") == 2, kinds

    # a new engine (a higher epoch than any before) serves every acknowledged byte
    uri = cli(d, "volume", "attach", "data", "--node", "node-2").stdout.strip()
    assert js(d, "volume", "get", "data")["epoch"] > old_epoch  # type: ignore[index]
    assert pattern_ok(uri, 0, 4096, 0x44)
    assert pattern_ok(uri, 4096, MiB - 4096, 0x5A)
    assert pattern_ok(uri, 8 * MiB, 64 << 10, 0x33)
    assert pattern_ok(uri, MiB, MiB, 0)
    qemu_io(uri, "write -P 0x66 2M 4k")  # and it writes
    cli(d, "volume", "detach", "data")
    uri = cli(d, "volume", "attach", "logs", "--node", "node-1").stdout.strip()
    assert pattern_ok(uri, 0, 64 << 10, 0x77)

    # adopting again is refused: the records exist
    again = cli(d, "volume", "adopt", "data", check=False)
    assert again.returncode != 0 and "exists" in again.stderr, again.stderr
