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
    a, da, b, db = two_clusters
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
