"""SIGKILL of the engine, the agent and the manager during backups and restores through a
local cluster of real processes, and GC running while a backup runs (issue 17's faults).

- The engine SIGKILLed during a backup and during a restore: the agent starts it again and
  runs the operation again; it completes.
- The agent of the engine's node SIGKILLed during a backup (the engine runs on and the new
  agent adopts it), the manager SIGKILLed during a restore: both complete.
- Through every kill the restoring volume is never shown healthy before its restore
  succeeded, and the restored data's sha256 equals the source's; the repository verifies
  offline with --read-data and lists only the backups that succeeded.
- The manager SIGKILLed during a backup (the engine runs on; the manager back learns its
  result from the agent's heartbeats), the agent of the restore engine's node SIGKILLed
  during a restore (the engine runs on and the new agent adopts it): both complete, and the
  next backup of the volume too.
- The first backup deleted, a second of the same data (reusing its chunks) runs while
  ``backup-target gc`` runs: the GC defers (the backup's lease) and the backup restores whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from tests.support.backup_cluster import (
    SIZE,
    MiB,
    backup_cluster,
    catalog,
    fill,
    jcli,
    kill_mid_way,
    node_of,
    op_of,
    packs_in,
    restored_never_healthy_before_done,
    volume_engine,
    volume_sha256,
    wait_backup,
    wait_packs,
    wait_progress,
    wait_restoring,
    watching_restore,
)
from tests.support.cli import cli

# ~3 minutes for the five: `make test-long` and `make probe` run them (not `make test`)
pytestmark = pytest.mark.long


@pytest.fixture
def cluster() -> Iterator[tuple[LocalCluster, Path]]:
    with backup_cluster() as c:
        yield c


def target_and_filled_volume(d: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """A file backup target ``nfs`` and a 2-replica volume ``data`` attached on node-1 and
    filled: -> (repository dir, key file, the volume's sha256)."""
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))
    cli(d, "volume", "create", "data", "--size", f"{SIZE // MiB}MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    fill(uri, tmp_path, SIZE)
    return repo, key, volume_sha256(uri, tmp_path)


def copy_sha256(d: Path, tmp_path: Path) -> str:
    """The sha256 of the restored volume ``copy``, attached on node-2."""
    uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
    return volume_sha256(uri, tmp_path)


def test_engine_killed_during_backup_and_restore(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    c, d = cluster
    repo, key, want = target_and_filled_volume(d, tmp_path)
    with ManagerClient.discover(None, d) as client:
        t0 = time.monotonic()
        bid = cli(d, "backup", "create", "data", "--target", "nfs", "-o", "json").stdout
        bid = json.loads(bid)["id"]
        packs = wait_packs(client, "data", repo, 3)
        at = kill_mid_way(c, client, "data", "backup")
        print(f"engine of data killed at backup progress {at:.2f}, {packs} packs written")
        b = wait_backup(client, bid)
        print(f"backup with a kill: {time.monotonic() - t0:.1f} s")
        assert b["state"] == "succeeded", b
        rep = catalog(f"file://{repo}", key, "--read-data")
        assert rep["ok"] and rep["backups"] == 1, rep

        cli(d, "backup", "restore", bid, "copy")
        at = kill_mid_way(c, client, "copy", "restore")
        print(f"engine of copy killed at restore progress {at:.2f}")
        # never healthy (nor attachable) until the restore succeeded
        restored_never_healthy_before_done(client, "copy")
    assert copy_sha256(d, tmp_path) == want


def test_agent_and_manager_killed_during_backup_and_restore(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    c, d = cluster
    repo, key, want = target_and_filled_volume(d, tmp_path)
    with ManagerClient.discover(None, d) as client:
        bid = json.loads(cli(d, "backup", "create", "data", "--target", "nfs", "-o", "json").stdout)
        bid = bid["id"]
        # the agent of the engine's node dies alone (its engine runs on) and comes back
        packs = wait_packs(client, "data", repo, 3)
        c.reload()
        agent = c.nodes["node-1"].pid
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        # the launcher in this process started it: reap it, or its zombie counts as running
        with contextlib.suppress(ChildProcessError):
            os.waitpid(agent, 0)
        print(f"agent of node-1 killed with {packs} packs of the backup written")
        assert c.start_node("node-1", timeout=60)
        b = wait_backup(client, bid)
        assert b["state"] == "succeeded", b

        cli(d, "backup", "restore", bid, "copy")
        at = wait_progress(client, "copy", "restore")
    manager = c.managers[0].id
    c.kill_manager(manager)
    print(f"{manager} killed at restore progress {at:.2f}")
    assert c.start_manager(manager, timeout=60)
    with ManagerClient.discover(None, d) as client:
        restored_never_healthy_before_done(client, "copy")
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 1, rep
    assert copy_sha256(d, tmp_path) == want


def test_gc_while_a_backup_runs(cluster: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    """The first backup is deleted; the second (of the same data) reuses its chunks while a
    GC runs: the GC must not delete what the running backup references."""
    _, d = cluster
    repo, key, want = target_and_filled_volume(d, tmp_path)
    first = jcli(d, "backup", "create", "data", "--target", "nfs", "--wait")
    assert first["state"] == "succeeded", first
    cli(d, "backup", "delete", first["id"])
    with ManagerClient.discover(None, d) as client:
        bid = json.loads(cli(d, "backup", "create", "data", "--target", "nfs", "-o", "json").stdout)
        bid = bid["id"]
        at = wait_progress(client, "data", "backup")
        gc = client.gc_backup_target("nfs")
        during = client.backup(bid)["state"]
        print(f"GC at backup progress {at:.2f} (backup {during} after it): {gc}")
        b = wait_backup(client, bid)
        assert b["state"] == "succeeded", b
    jcli(d, "backup-target", "gc", "nfs")  # and once more after: the live backup stays whole
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 1, rep
    cli(d, "backup", "restore", bid, "copy", "--wait", timeout=300)
    assert copy_sha256(d, tmp_path) == want


def kill_agent(c: LocalCluster, node: str) -> int:
    """SIGKILL a node's agent alone (what it started runs on) and reap it: the launcher
    in this process started it, and its zombie would count as running. Its PID."""
    c.reload()
    agent = c.nodes[node].pid
    assert agent is not None, f"no agent of {node} runs"
    os.kill(agent, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(agent, 0)
    return agent


def test_manager_killed_during_backup(cluster: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    c, d = cluster
    repo, key, want = target_and_filled_volume(d, tmp_path)
    t0 = time.monotonic()
    bid = json.loads(cli(d, "backup", "create", "data", "--target", "nfs", "-o", "json").stdout)
    bid = bid["id"]
    with ManagerClient.discover(None, d) as client:
        packs = wait_packs(client, "data", repo, 3)
    manager = c.managers[0].id
    assert c.kill_manager(manager)
    killed_at = packs_in(repo)
    assert c.start_manager(manager, timeout=60)
    # the data kept moving with no manager: the engine ran the backup on
    print(f"{manager} killed with {killed_at} packs written ({packs} seen moving), "
          f"{packs_in(repo)} when it was back")  # fmt: skip
    with ManagerClient.discover(None, d) as client:
        b = wait_backup(client, bid)
        print(f"backup with the manager killed: {time.monotonic() - t0:.1f} s")
        assert b["state"] == "succeeded", b
        # the volume is unaffected: healthy (a replica the engine dropped meanwhile is
        # rebuilt; said if so)
        deadline = time.monotonic() + 60
        while (v := client.volume("data"))["robustness"] != "healthy":
            print("data not healthy after the manager's kill:", v["robustness"],
                  [(r["node"], r["mode"], r["state"], r["error"]) for r in v["replicas"]],
                  v.get("error"))  # fmt: skip
            assert time.monotonic() < deadline, v
            time.sleep(1)
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 1, rep
    # the next run completes (incremental to the one that survived the kill)
    nxt = jcli(d, "backup", "create", "data", "--target", "nfs", "--wait")
    assert nxt["state"] == "succeeded", nxt
    assert nxt["parent"], nxt
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 2, rep
    cli(d, "backup", "restore", bid, "copy")
    with watching_restore(d, "copy"):
        pass
    assert copy_sha256(d, tmp_path) == want


def test_agent_killed_during_restore(cluster: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    """The agent of the node whose engine runs the restore dies alone: the engine writes
    on, the agent started again adopts it and reports its result."""
    c, d = cluster
    repo, key, want = target_and_filled_volume(d, tmp_path)
    first = jcli(d, "backup", "create", "data", "--target", "nfs", "--wait")
    assert first["state"] == "succeeded", first

    t0 = time.monotonic()
    cli(d, "backup", "restore", first["id"], "copy")
    with watching_restore(d, "copy"):
        with ManagerClient.discover(None, d) as client:
            wrote = wait_restoring(client, d, "copy", 64 * MiB)
        engine = volume_engine(c, "copy")
        assert engine is not None, "no engine of copy runs"
        node = node_of(c, engine)
        agent = kill_agent(c, node)
        print(
            f"agent {agent} of {node} (restore engine {engine}) killed with {wrote} bytes written"
        )
        assert c.start_node(node, timeout=60)
    print(f"restore with the agent killed: {time.monotonic() - t0:.1f} s")
    with ManagerClient.discover(None, d) as client:
        op = op_of(client, "copy", "restore")
        print(f"restore operation after the kill: {op['state']}, {op['result']}")
        assert op["result"]["bytes_restored"] == SIZE, op
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 1, rep
    assert copy_sha256(d, tmp_path) == want
    # the next run completes: a backup of the restored volume
    nxt = jcli(d, "backup", "create", "copy", "--target", "nfs", "--wait")
    assert nxt["state"] == "succeeded", nxt
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 2, rep
