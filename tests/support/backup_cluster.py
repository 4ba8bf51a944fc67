"""Helpers of the tests that back up and restore through a local cluster under faults
(tests/integration/test_backup_faults.py, tests/probe/test_backup_kills.py): the cluster,
data written and read through the engine's NBD export, backups polled through the manager,
the repository checked offline, the engine of a volume found among this cluster's processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.nbd_clients import need, qemu_io

MiB = 1 << 20
# the volume the kill tests back up and restore, big enough to be caught running (measured
# here: 128 MiB backed up in 2.5 s under load, done before a poll saw it; 512 MiB in 3.8 s
# on a quiet machine, 14-17 s under load)
SIZE = 512 * MiB


@contextlib.contextmanager
def backup_cluster() -> Iterator[tuple[LocalCluster, Path]]:
    """A local cluster of three nodes (SQLite state store, mutual TLS), purged after."""
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


def packs_in(repo: Path) -> int:
    return sum(1 for p in (repo / "packs").rglob("*") if p.is_file()) if repo.exists() else 0


def wait_packs(client: ManagerClient, volume: str, repo: Path, n: int) -> int:
    """Poll until the running backup of ``volume`` has written ``n`` packs more into the
    file repository ``repo`` (data moving, the backup not done: mid-way); how many it has."""
    before = packs_in(repo)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        op = op_of(client, volume, "backup")
        assert op["state"] not in ("succeeded", "failed"), (
            f"the backup finished before {n} packs were seen (make the volume bigger): {op}"
        )
        if (now := packs_in(repo)) >= before + n:
            return now - before
        time.sleep(0.02)
    raise AssertionError(f"the backup of {volume} wrote no {n} packs")


def replica_bytes(d: Path, ids: list[str]) -> int:
    """Bytes allocated on disk by the data files of the replicas ``ids`` of the cluster in
    ``d`` (every disk of it keeps a replica at ``DISK/replicas/ID/``)."""
    total = 0
    for rid in ids:
        for f in d.rglob(f"replicas/{rid}/layer-*.data*"):
            with contextlib.suppress(OSError):
                total += f.stat().st_blocks * 512
    return total


def wait_restoring(client: ManagerClient, d: Path, volume: str, n: int) -> int:
    """Poll until the running restore of ``volume`` has written ``n`` bytes into each of
    its replicas on disk (data moving, the restore not done: mid-way); how many it has."""
    ids = [r["id"] for r in client.volume(volume)["replicas"]]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        op = op_of(client, volume, "restore")
        assert op["state"] not in ("succeeded", "failed"), (
            f"the restore finished before {n} bytes were seen (make the volume bigger): {op}"
        )
        if (now := replica_bytes(d, ids)) >= n * len(ids):
            return now
        time.sleep(0.05)
    raise AssertionError(f"the restore of {volume} wrote no {n} bytes")


def kill_mid_way(c: LocalCluster, client: ManagerClient, volume: str, kind: str) -> float:
    """SIGKILL ``volume``'s engine once its ``kind`` operation has started moving data;
    the progress it had reached (to show the kill came mid-way)."""
    at = wait_progress(client, volume, kind)
    pid = volume_engine(c, volume)
    assert pid is not None, f"no engine of {volume} runs"
    os.kill(pid, signal.SIGKILL)
    return at


def restored_never_healthy_before_done(client: ManagerClient, volume: str) -> int:
    """Poll a restoring volume until its restore succeeded: never healthy before that.
    How many times it looked (to show the polls spanned a fault)."""
    deadline = time.monotonic() + 300
    polls = 0
    while True:
        v = client.volume(volume)
        op = op_of(client, volume, "restore")
        polls += 1
        if op["state"] == "succeeded" and v["state"] != "restoring":
            return polls
        assert op["state"] != "failed", op
        assert v["robustness"] != "healthy", (v, op)
        assert time.monotonic() < deadline, (v, op)
        time.sleep(0.1)


@contextlib.contextmanager
def watching_restore(d: Path, volume: str) -> Iterator[None]:
    """Run ``restored_never_healthy_before_done`` on ``volume`` in a thread (its own
    manager client) for the whole ``with`` block and after it until the restore succeeded:
    a fault injected inside the block is polled through, not only after. The block's exit
    waits for the thread and raises what it found."""
    found: list[BaseException] = []
    polls: list[int] = []

    def watch() -> None:
        try:
            with ManagerClient.discover(None, d) as client:
                polls.append(restored_never_healthy_before_done(client, volume))
        except BaseException as e:  # handed to the test's thread below
            found.append(e)

    t = threading.Thread(target=watch, name=f"watch-{volume}", daemon=True)
    t.start()
    try:
        yield
    finally:
        t.join(timeout=330)  # the helper's own deadline is 300 s
    assert not t.is_alive(), f"the watch of {volume}'s restore never ended"
    if found:
        raise found[0]
    print(f"{volume}: polled {polls[0]} times until its restore succeeded, never healthy before")


def node_of(c: LocalCluster, pid: int) -> str:
    """The node of this cluster one of whose processes ``pid`` is."""
    for node in c.nodes:
        if pid in c.node_processes(node):
            return node
    raise AssertionError(f"process {pid} belongs to no node of the cluster")
