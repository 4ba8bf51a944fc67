"""Disaster recovery between two local clusters of real processes (docs/disaster-recovery.md):
cluster A (its own manager, agents, replica servers, engines; mutual TLS) writes and backs
up to a target that cluster B (another directory, another manager) shares. B's standby
restores A's newest backup, then follows: each new backup is applied incrementally (only
what differs is fetched), sealed, and pinned against A's deletions. A writes on while it
backs up, and is destroyed mid-write; B activates (timed), and B's volume holds exactly
what A's last completed backup holds (sha256 against that backup read offline from the
repository with the key), nothing from after it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.backup.repository import Repository
from cargohold.backup.targets import open_target
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli
from tests.support.cluster_logs import failed, print_tails
from tests.support.nbd_clients import need, qemu_io

MiB = 1 << 20
SIZE = 64 * MiB


def jcli(d: Path, *args: str, timeout: float = 300, check: bool = True) -> Any:
    p = cli(d, *args, "-o", "json", timeout=timeout, check=check)
    return json.loads(p.stdout) if p.stdout.strip() else {"exit": p.returncode, "err": p.stderr}


@pytest.fixture
def two_clusters(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalCluster, Path, LocalCluster, Path]]:
    need("nbdcopy", "qemu-io")
    # B's follower reads the catalog every second (the default is 15 s)
    monkeypatch.setenv("CARGOHOLD_MANAGER_STANDBY_POLL_INTERVAL", "1")
    da, db = Path(f"/tmp/dra-{os.getpid()}"), Path(f"/tmp/drb-{os.getpid()}")
    a = LocalCluster.create(str(da), nodes=2, backend="sqlite").up(timeout=90)
    try:
        b = LocalCluster.create(str(db), nodes=2, backend="sqlite").up(timeout=90)
        try:
            yield a, da, b, db
        finally:
            if failed(request):
                print_tails(db)
            b.down(purge=True)
    finally:
        if da.exists():  # the test destroys A itself
            if failed(request):
                print_tails(da)
            a.down(purge=True)


def sha256_of(uri: str, tmp: Path) -> str:
    out = tmp / "read.img"
    out.unlink(missing_ok=True)
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    h = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return h


def backup_sha256(url: str, key: Path, backup: str) -> str:
    """What backup ``backup`` holds (read offline from the repository, with the key alone)."""
    repo = Repository.open(open_target(url), base64.b64decode(key.read_text().strip()))
    r = repo.restore_reader(backup)
    img = bytearray(r.info.size)
    for off, data in r.read_all():
        img[off : off + len(data)] = data
    return hashlib.sha256(img).hexdigest()


def wait_standby(d: Path, name: str, pred: Any, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        v = jcli(d, "volume", "get", name)
        sb = v.get("standby") or {}
        if pred(sb):
            return v
        assert time.monotonic() < deadline, sb
        time.sleep(0.5)


class Writer(threading.Thread):
    """qemu-io writes of 64 KiB at random offsets into A's volume, until stopped or A is
    gone; how many were acknowledged."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri, self.stop, self.acked, self.rng = uri, threading.Event(), 0, random.Random(7)

    def run(self) -> None:
        while not self.stop.is_set():
            off = self.rng.randrange(0, SIZE // (64 << 10)) * (64 << 10)
            pat = self.rng.randrange(1, 255)
            p = qemu_io(self.uri, f"write -P {pat} {off} 64k", timeout=30, check=False)
            if p.returncode != 0:
                return
            self.acked += 1


@pytest.mark.long  # two clusters: ~3 min here
def test_standby_follows_and_activates_after_the_source_is_destroyed(
    two_clusters: tuple[LocalCluster, Path, LocalCluster, Path], tmp_path: Path
) -> None:
    a, da, _b, db = two_clusters
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    url = f"file://{repo}"
    cli(da, "backup-target", "add", "site-a", url, "--generate-key", str(key))
    cli(db, "backup-target", "add", "site-a", url, "--key-file", str(key))
    cli(da, "volume", "create", "db", "--size", f"{SIZE // MiB}MiB", "--replicas", "2")
    uri = cli(da, "volume", "attach", "db", "--node", "node-1").stdout.strip()
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(16 * MiB))
    p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    b1 = jcli(da, "backup", "create", "db", "--target", "site-a", "--wait")
    assert b1["state"] == "succeeded", b1

    # B: a standby of A's volume db, restored from b1
    v = jcli(db, "volume", "create-standby", "db-dr", "--from-target", "site-a",
             "--source-volume", "db", "--replicas", "2", "--wait")  # fmt: skip
    assert v["standby"]["applied"] == b1["repository_id"], v["standby"]
    assert v["size_bytes"] == SIZE
    p = cli(db, "volume", "attach", "db-dr", "--node", "node-1", check=False)
    assert p.returncode != 0 and "activate it first" in p.stderr, p.stderr

    # A writes on; two more backups under the workload; B applies each
    w = Writer(uri)
    w.start()
    last = b1
    for _ in range(2):
        time.sleep(2)
        last = jcli(da, "backup", "create", "db", "--target", "site-a", "--wait")
        assert last["state"] == "succeeded", last
    t0 = time.monotonic()
    v = wait_standby(db, "db-dr", lambda sb: sb.get("applied") == last["repository_id"])
    caught_up = time.monotonic() - t0
    sb = v["standby"]
    print(f"standby caught up {caught_up:.1f} s after the backup; last apply: {sb['last_apply']}")
    assert sb["applies"] >= 2 and sb["lag"]["backups"] == 0 and sb["lag"]["seconds"] == 0
    changed = sb["last_apply"]["changed_bytes"]
    assert 0 < changed < SIZE and sb["last_apply"]["fetched_bytes"] <= changed + MiB, sb
    # A's retention may not delete what B holds
    bk = jcli(da, "backup", "delete", last["id"], check=False)
    assert bk.get("exit", 0) != 0 or "pinned" in json.dumps(bk), bk

    # A is destroyed mid-write
    assert w.is_alive() and w.acked > 0
    a.down(purge=True)
    w.stop.set()
    w.join(timeout=60)

    # B activates: it holds exactly A's last completed backup
    t0 = time.monotonic()
    v = jcli(db, "volume", "activate", "db-dr", "--wait")
    took = time.monotonic() - t0
    print(f"activation of an in-sync {SIZE // MiB} MiB standby: {took:.2f} s (CLI included)")
    assert v["standby"]["state"] == "active" and v["standby"]["applied"] == last["repository_id"]
    assert took < 10
    uri_b = cli(db, "volume", "attach", "db-dr", "--node", "node-2").stdout.strip()
    assert sha256_of(uri_b, tmp_path) == backup_sha256(url, key, last["repository_id"])
    qemu_io(uri_b, "write -P 0x77 0 64k", "read -P 0x77 0 64k")  # writable now


def fill_random(uri: str, tmp: Path, size: int) -> None:
    src = tmp / "fill.img"
    with open(src, "wb") as f:
        for _ in range(0, size, 4 * MiB):
            f.write(os.urandom(4 * MiB))
    p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    src.unlink()


def kill_agent_of_engine(c: LocalCluster, volume: str) -> str:
    """SIGKILL the agent of the node whose engine serves ``volume`` (the engine runs on),
    then start the node's agent again; the node's name."""
    import contextlib
    import signal

    from tests.support.backup_cluster import node_of, volume_engine

    deadline = time.monotonic() + 60
    while (engine := volume_engine(c, volume)) is None:
        assert time.monotonic() < deadline, f"no engine of {volume} runs"
        time.sleep(0.05)
    node = node_of(c, engine)
    c.reload()
    agent = c.nodes[node].pid
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(agent, 0)
    assert c.start_node(node, timeout=60)
    return node


@pytest.mark.long  # two clusters and an S3 server: ~4 min here
def test_standby_faults_s3_down_retention_and_an_agent_killed_mid_apply(
    two_clusters: tuple[LocalCluster, Path, LocalCluster, Path], tmp_path: Path
) -> None:
    from tests.support.s3_server import S3Server

    _a, da, b, db = two_clusters
    with S3Server() as s3:
        creds = tmp_path / "s3.creds"
        creds.write_text(f"access_key={s3.access_key}\nsecret_key={s3.secret_key}\n")
        key = tmp_path / "repo.key"
        url = f"s3://{s3.bucket}/site-a"
        s3args = ("--endpoint", s3.endpoint, "--credentials-file", str(creds))
        cli(da, "backup-target", "add", "site-a", url, *s3args, "--generate-key", str(key))
        cli(db, "backup-target", "add", "site-a", url, *s3args, "--key-file", str(key))
        size = 256 * MiB
        cli(da, "volume", "create", "db", "--size", f"{size // MiB}MiB", "--replicas", "2")
        uri = cli(da, "volume", "attach", "db", "--node", "node-1").stdout.strip()
        fill_random(uri, tmp_path, 32 * MiB)
        b1 = jcli(da, "backup", "create", "db", "--target", "site-a", "--wait")
        v = jcli(db, "volume", "create-standby", "db-dr", "--from-target", "site-a",
                 "--source-volume", "db", "--replicas", "2", "--wait")  # fmt: skip
        assert v["standby"]["applied"] == b1["repository_id"], v["standby"]

        # the S3 server stops for a while: polls fail (said), the lag grows; then it resumes
        s3.pause()
        v = wait_standby(db, "db-dr", lambda sb: bool(sb.get("poll_error")), timeout=60)
        since = v["standby"]["lag"]["since_poll_seconds"]
        time.sleep(4)
        grown = jcli(db, "volume", "get", "db-dr")["standby"]["lag"]["since_poll_seconds"]
        print(f"S3 down: {v['standby']['poll_error']!r}; since last poll {since} -> {grown} s")
        assert grown > since
        s3.resume()
        wait_standby(db, "db-dr", lambda sb: not sb.get("poll_error"), timeout=60)
        qemu_io(uri, "write -P 0x21 1M 1M")
        bx = jcli(da, "backup", "create", "db", "--target", "site-a", "--wait")
        v = wait_standby(db, "db-dr", lambda sb: sb.get("applied") == bx["repository_id"])
        print(f"after S3 resumed: applied {bx['repository_id']}, lag {v['standby']['lag']}")

        # a big apply (224 MiB changed); meanwhile A's retention deletes old backups and GC
        # runs; B's agent is killed mid-apply and B is activated at once
        fill_random(uri, tmp_path, size)
        b2 = jcli(da, "backup", "create", "db", "--target", "site-a", "--wait", timeout=600)
        wait_standby(db, "db-dr", lambda sb: sb.get("applying") == b2["repository_id"]
                     and sb.get("phase") == "restore", timeout=120)  # fmt: skip
        node = kill_agent_of_engine(b, "db-dr")
        print(f"agent of {node} (the standby's engine) killed mid-apply")
        gone = jcli(da, "backup", "delete", b1["id"], check=False)  # unpinned: deleted
        kept = jcli(da, "backup", "delete", bx["id"], check=False)  # B's base: refused
        print(f"retention during the apply: b1 -> {gone.get('state')}, bx -> {kept}")
        assert gone.get("state") == "deleted", gone
        assert kept.get("exit", 0) != 0 and "pinned" in kept["err"], kept
        cli(da, "backup-target", "gc", "site-a", check=False)
        t0 = time.monotonic()
        v = jcli(db, "volume", "activate", "db-dr", "--wait", "--timeout", "600", timeout=660)
        took = time.monotonic() - t0
        sb = v["standby"]
        print(f"activated after the kill in {took:.1f} s: holds {sb['applied']} "
              f"(b2 {b2['repository_id']}, bx {bx['repository_id']})")  # fmt: skip
        assert sb["state"] == "active" and sb["applied"] in (
            bx["repository_id"],
            b2["repository_id"],
        )
        uri_b = cli(db, "volume", "attach", "db-dr", "--node", "node-2").stdout.strip()
        got = sha256_of(uri_b, tmp_path)
        want = backup_sha256_s3(url, s3.endpoint, s3.access_key, s3.secret_key, key, sb["applied"])
        assert got == want


def backup_sha256_s3(url: str, endpoint: str, ak: str, sk: str, key: Path, backup: str) -> str:
    repo = Repository.open(
        open_target(url, endpoint=endpoint, access_key=ak, secret_key=sk),
        base64.b64decode(key.read_text().strip()),
    )
    r = repo.restore_reader(backup)
    h = hashlib.sha256()
    pos = 0
    for off, data in r.read_all():
        while pos < off:
            n = min(off - pos, 4 * MiB)
            h.update(bytes(n))
            pos += n
        h.update(data)
        pos = off + len(data)
    while pos < r.info.size:
        n = min(r.info.size - pos, 4 * MiB)
        h.update(bytes(n))
        pos += n
    return h.hexdigest()
