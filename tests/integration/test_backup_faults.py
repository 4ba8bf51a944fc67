"""Backups and restores under faults, through a local cluster of real processes (manager,
three agents, their replica servers and engines, mutual TLS) and the ``cargohold`` CLI.

- S3: a target on a real SeaweedFS (tests/support/s3_server.py): a full and an incremental
  backup, the incremental restored and compared by sha256; then the faults a target can
  have: wrong credentials (refused when added, nothing recorded), a bucket deleted under the
  target, the server gone. Each failed backup says why on its record, the volume stays
  healthy and usable (written and read after), and the repository's catalog lists only the
  backups that succeeded.
- A file target on a small loop-mounted ext4 that fills up (root only): the same checks.
- The engine SIGKILLed during a backup and during a restore: the agent runs the operation
  again and it completes; the restoring volume is never shown healthy before that; the
  restored data's sha256 equals the source's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.nbd_clients import need, qemu_io
from tests.support.s3_server import S3Server

MiB = 1 << 20
# the volume the kill tests back up and restore: big enough to be caught mid-way (measured
# here: 128 MiB backed up in 2.5 s, done before a poll saw its progress move)
SIZE = 512 * MiB


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, Path]]:
    need("nbdcopy", "qemu-io")
    d = Path(f"/tmp/bkf-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3, backend="sqlite").up(timeout=90)
    try:
        yield c, d
    finally:
        c.down(purge=True)


def jcli(d: Path, *args: str, timeout: float = 300, check: bool = True) -> Any:
    p = cli(d, *args, "-o", "json", timeout=timeout, check=check)
    return json.loads(p.stdout) if p.stdout.strip() else {"exit": p.returncode, "err": p.stderr}


def volume_sha256(uri: str, tmp: Path) -> str:
    out = tmp / "read.img"
    out.unlink(missing_ok=True)
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    h = hashlib.sha256()
    with open(out, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    out.unlink()
    return h.hexdigest()


def fill(uri: str, tmp: Path, size: int) -> None:
    src = tmp / "src.img"
    with open(src, "wb") as f:
        for _ in range(0, size, 4 * MiB):
            f.write(os.urandom(4 * MiB))
    p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    src.unlink()


def still_usable(d: Path, uri: str, volume: str = "data") -> None:
    """The volume is healthy and serves a write and the read of it after."""
    v = js(d, "volume", "get", volume)
    assert v["robustness"] == "healthy", v  # type: ignore[index]
    qemu_io(uri, "write -P 0x6b 2M 64k")
    qemu_io(uri, "read -P 0x6b 2M 64k")  # fails on a pattern mismatch


def failed_backup(d: Path, *names: str) -> dict[str, Any]:
    """``backup create VOLUME --target T --wait`` that must fail: its record."""
    b = jcli(d, "backup", "create", *names, "--wait", check=False)
    assert b.get("state") == "failed", b
    assert b.get("repository_id") in (None, ""), b
    return b


def catalog(url: str, key: Path, *extra: str) -> dict[str, Any]:
    """The repository checked offline (no manager): its report, with the backup count."""
    p = subprocess.run(
        [sys.executable, "-m", "cargohold", "backup", "verify", url, "--key-file", str(key),
         *extra, "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.stdout.strip(), p.stderr
    rep: dict[str, Any] = json.loads(p.stdout)
    return rep


def test_s3_through_the_cluster_and_its_faults(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    _, d = cluster
    with S3Server() as s3:
        creds = tmp_path / "s3.creds"
        creds.write_text(f"access_key={s3.access_key}\nsecret_key={s3.secret_key}\n")
        key = tmp_path / "s3.key"
        url = f"s3://{s3.bucket}/cluster-a"
        # wrong credentials: refused when added, with the reason, and nothing recorded
        bad = tmp_path / "bad.creds"
        bad.write_text(f"access_key={s3.access_key}\nsecret_key=not-the-secret\n")
        p = cli(d, "backup-target", "add", "s3bad", url, "--endpoint", s3.endpoint,
                "--credentials-file", str(bad), "--generate-key", str(tmp_path / "bad.key"),
                check=False)  # fmt: skip
        assert p.returncode == 2, p.stdout + p.stderr
        assert "SignatureDoesNotMatch" in p.stderr or "credentials" in p.stderr.lower(), p.stderr
        assert "not-the-secret" not in p.stdout + p.stderr
        assert js(d, "backup-target", "list") == []

        cli(d, "backup-target", "add", "s3", url, "--endpoint", s3.endpoint,
            "--credentials-file", str(creds), "--generate-key", str(key))  # fmt: skip
        cli(d, "volume", "create", "data", "--size", "32MiB", "--replicas", "2")
        uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
        fill(uri, tmp_path, 8 * MiB)
        first = jcli(d, "backup", "create", "data", "--target", "s3", "--wait")
        assert first["state"] == "succeeded" and first["info"]["mode"] == "full", first
        qemu_io(uri, "write -P 0x42 4M 1M")
        want = volume_sha256(uri, tmp_path)
        second = jcli(d, "backup", "create", "data", "--target", "s3", "--wait")
        assert second["state"] == "succeeded", second
        assert second["parent"] == first["repository_id"], second
        print(f"S3 full: {first['info']}\nS3 incremental: {second['info']}")
        if second["info"]["mode"] == "incremental":
            assert second["info"]["bytes_read"] <= 2 * MiB, second
        assert second["info"]["bytes_new"] <= 2 * MiB, second
        qemu_io(uri, "write -P 0x99 0 1M")  # after the backup: the restore must not see it
        cli(d, "backup", "restore", second["id"], "copy", "--wait", timeout=300)
        copy_uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
        assert volume_sha256(copy_uri, tmp_path) == want

        # a bucket deleted under a target: a clear error, the volume unaffected
        s3.create_bucket("gone")
        cli(d, "backup-target", "add", "s3gone", "s3://gone/x", "--endpoint", s3.endpoint,
            "--credentials-file", str(creds), "--generate-key", str(tmp_path / "gone.key"))  # fmt: skip
        admin = s3.client(admin=True)
        for page in admin.get_paginator("list_objects_v2").paginate(Bucket="gone"):
            for o in page.get("Contents", []):
                admin.delete_object(Bucket="gone", Key=o["Key"])
        admin.delete_bucket(Bucket="gone")
        b = failed_backup(d, "data", "--target", "s3gone")
        assert "gone" in b["error"] and "not exist" in b["error"], b
        still_usable(d, uri)

        rep = catalog(url, key, "--endpoint", s3.endpoint, "--credentials-file", str(creds))
        assert rep["ok"] and rep["backups"] == 2, rep
        s3.stop()  # the server goes away: the target is unreachable

    b = failed_backup(d, "data", "--target", "s3")
    assert "unreachable" in b["error"].lower() or "connect" in b["error"].lower(), b
    assert "s3://" in b["error"] or "127.0.0.1" in b["error"], b
    still_usable(d, uri)
    states = sorted(x["state"] for x in js(d, "backup", "list", "--target", "s3"))  # type: ignore[union-attr]
    assert states == ["failed", "succeeded", "succeeded"], states


@pytest.mark.root
def test_a_full_file_target(cluster: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    from tests.probe.engine_support import loop_ext4, loop_ext4_unavailable

    why = loop_ext4_unavailable()
    if why:
        pytest.skip(why)
    _, d = cluster
    with loop_ext4(tmp_path, 24 * MiB) as mnt:
        repo, key = mnt / "repo", tmp_path / "file.key"
        cli(d, "backup-target", "add", "small", f"file://{repo}", "--generate-key", str(key))
        cli(d, "volume", "create", "data", "--size", "64MiB", "--replicas", "2")
        uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
        fill(uri, tmp_path, 4 * MiB)
        first = jcli(d, "backup", "create", "data", "--target", "small", "--wait")
        assert first["state"] == "succeeded", first
        fill(uri, tmp_path, 48 * MiB)  # random: neither compresses nor deduplicates
        b = failed_backup(d, "data", "--target", "small")
        assert "no space" in b["error"].lower(), b
        still_usable(d, uri)
        rep = catalog(f"file://{repo}", key)
        assert rep["ok"] and rep["backups"] == 1, rep
        assert not [p for p in repo.rglob("*") if p.is_file() and p.name.startswith(".")]


def volume_engine(c: LocalCluster, volume: str) -> int | None:
    """The PID of the engine process of ``volume`` in this cluster (only this cluster's
    processes are looked at: other clusters on the machine may have volumes of that name)."""
    for node in c.nodes:
        for pid in c.node_processes(node):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"engine" in cmd and b"--volume" in cmd:
                if cmd[cmd.index(b"--volume") + 1] == volume.encode():
                    return pid
    return None


def op_of(client: ManagerClient, volume: str, kind: str) -> dict[str, Any]:
    op = client.find_operation(volume, kind)
    assert op is not None, f"no {kind} operation of {volume}"
    return op


def wait_backup(client: ManagerClient, bid: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (b := client.backup(bid))["state"] in ("pending", "running"):
        assert time.monotonic() < deadline, b
        time.sleep(0.2)
    return b


def wait_progress(client: ManagerClient, volume: str, kind: str) -> float:
    """Poll until ``volume``'s ``kind`` operation runs on an engine (not done): its
    progress then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        op = op_of(client, volume, kind)
        assert op["state"] not in ("succeeded", "failed"), (
            f"the {kind} finished before the fault came (make the volume bigger): {op}"
        )
        # the agent reports progress with its heartbeats (coarse): running is enough
        if op["state"] == "running" and float(op.get("progress") or 0) < 0.9:
            return float(op.get("progress") or 0)
        time.sleep(0.02)
    raise AssertionError(f"the {kind} of {volume} never got under way")


def kill_mid_way(c: LocalCluster, client: ManagerClient, volume: str, kind: str) -> float:
    """SIGKILL ``volume``'s engine once its ``kind`` operation has started moving data;
    the progress it had reached (to show the kill came mid-way)."""
    at = wait_progress(client, volume, kind)
    pid = volume_engine(c, volume)
    assert pid is not None, f"no engine of {volume} runs"
    os.kill(pid, signal.SIGKILL)
    return at


def test_engine_killed_during_backup_and_restore(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    c, d = cluster
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))
    cli(d, "volume", "create", "data", "--size", f"{SIZE // MiB}MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    fill(uri, tmp_path, SIZE)
    want = volume_sha256(uri, tmp_path)
    with ManagerClient.discover(None, d) as client:
        t0 = time.monotonic()
        bid = cli(d, "backup", "create", "data", "--target", "nfs", "-o", "json").stdout
        bid = json.loads(bid)["id"]
        at = kill_mid_way(c, client, "data", "backup")
        print(f"engine of data killed at backup progress {at:.2f}")
        b = wait_backup(client, bid)
        print(f"backup with a kill: {time.monotonic() - t0:.1f} s")
        assert b["state"] == "succeeded", b
        rep = catalog(f"file://{repo}", key, "--read-data")
        assert rep["ok"] and rep["backups"] == 1, rep

        cli(d, "backup", "restore", bid, "copy")
        at = kill_mid_way(c, client, "copy", "restore")
        print(f"engine of copy killed at restore progress {at:.2f}")
        # never healthy (nor attachable) until the restore succeeded
        deadline = time.monotonic() + 300
        while True:
            v = client.volume("copy")
            op = op_of(client, "copy", "restore")
            if op["state"] == "succeeded" and v["state"] != "restoring":
                break
            assert op["state"] != "failed", op
            assert v["robustness"] != "healthy", (v, op)
            assert time.monotonic() < deadline, (v, op)
            time.sleep(0.1)
    copy_uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
    assert volume_sha256(copy_uri, tmp_path) == want


def test_agent_and_manager_killed_during_backup_and_restore(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    c, d = cluster
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))
    cli(d, "volume", "create", "data", "--size", f"{SIZE // MiB}MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    fill(uri, tmp_path, SIZE)
    want = volume_sha256(uri, tmp_path)
    with ManagerClient.discover(None, d) as client:
        bid = json.loads(cli(d, "backup", "create", "data", "--target", "nfs", "-o", "json").stdout)
        bid = bid["id"]
        # the agent of the engine's node dies alone (its engine runs on) and comes back
        at = wait_progress(client, "data", "backup")
        c.reload()
        agent = c.nodes["node-1"].pid
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        # the launcher in this process started it: reap it, or its zombie counts as running
        with contextlib.suppress(ChildProcessError):
            os.waitpid(agent, 0)
        print(f"agent of node-1 killed at backup progress {at:.2f}")
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
        deadline = time.monotonic() + 300
        while True:
            v = client.volume("copy")
            op = op_of(client, "copy", "restore")
            if op["state"] == "succeeded" and v["state"] != "restoring":
                break
            assert op["state"] != "failed", op
            assert v["robustness"] != "healthy", (v, op)
            assert time.monotonic() < deadline, (v, op)
            time.sleep(0.1)
    rep = catalog(f"file://{repo}", key, "--read-data")
    assert rep["ok"] and rep["backups"] == 1, rep
    copy_uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
    assert volume_sha256(copy_uri, tmp_path) == want


def test_gc_while_a_backup_runs(cluster: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    """The first backup is deleted; the second (of the same data) reuses its chunks while a
    GC runs: the GC must not delete what the running backup references."""
    _, d = cluster
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))
    cli(d, "volume", "create", "data", "--size", f"{SIZE // MiB}MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    fill(uri, tmp_path, SIZE)
    want = volume_sha256(uri, tmp_path)
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
    copy_uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
    assert volume_sha256(copy_uri, tmp_path) == want
