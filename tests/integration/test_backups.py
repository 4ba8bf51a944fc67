"""Backup and restore through a local cluster of real processes (manager, three agents,
their replica servers and engines, mutual TLS) and the ``cargohold`` CLI, to a file target
in a tmp directory: a target added with a generated key, real data written through the
engine's NBD endpoint (nbdcopy, qemu-io), a full backup then an incremental one, both
listed, the incremental restored into a new volume and read back — its sha256 equal to the
source's at backup time — and the repository verified offline with the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import cli, js
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need, qemu_io

MiB = 1 << 20


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    need("nbdcopy", "qemu-io")
    with local_cluster("bk", lambda: failed(request)) as d:
        yield d


def jcli(d: Path, *args: str, timeout: float = 300) -> Any:
    return json.loads(cli(d, *args, "-o", "json", timeout=timeout).stdout)


def volume_sha256(uri: str, tmp: Path) -> str:
    out = tmp / "read.img"
    out.unlink(missing_ok=True)
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_target_is_checked_and_a_wrong_key_refused(cluster: Path, tmp_path: Path) -> None:
    d = cluster
    repo = tmp_path / "repo"
    key = tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))
    assert any(repo.iterdir())  # a repository was made there
    [t] = js(d, "backup-target", "list")  # type: ignore[misc]
    assert t["url"] == f"file://{repo}" and not t["has_credentials"]
    # another name for the same repository with another key: refused, nothing recorded
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    p = cli(d, "backup-target", "add", "again", f"file://{repo}", "--key-file", str(other),
            check=False)  # fmt: skip
    assert p.returncode == 2 and "repository key does not open" in p.stderr, p.stderr
    assert [t["name"] for t in js(d, "backup-target", "list")] == ["nfs"]  # type: ignore[union-attr]
    # the key file the CLI made is the manager's copy
    copy = tmp_path / "copy.key"
    cli(d, "backup-target", "export-key", "nfs", "--to", str(copy))
    assert copy.read_text() == key.read_text()


def test_backup_incremental_restore_and_verify(cluster: Path, tmp_path: Path) -> None:
    d = cluster
    repo = tmp_path / "repo"
    key = tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))
    cli(d, "volume", "create", "data", "--size", "32MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "data", "--node", "node-1").stdout.strip()
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(8 * MiB))
    p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    qemu_io(uri, "write -P 0x5a 20M 1M")

    first = jcli(d, "backup", "create", "data", "--target", "nfs", "--wait")
    assert first["state"] == "succeeded" and first["parent"] is None, first
    # change 1 MiB, back up again: incremental to the first
    qemu_io(uri, "write -P 0x42 4M 1M")
    want = volume_sha256(uri, tmp_path)
    second = jcli(d, "backup", "create", "data", "--target", "nfs", "--wait")
    assert second["state"] == "succeeded", second
    assert second["parent"] == first["repository_id"]
    info1, info2 = first["info"], second["info"]
    print(f"full: {info1}\nincremental: {info2}")  # the figures, with -s
    assert info1["mode"] == "full" and info1["bytes_read"] >= 9 * MiB, info1
    # 1 MiB changed: only it is read (the engine proved the delta complete), or everything
    # when it could not — then the reason says why and dedup keeps the upload small
    if info2["mode"] == "incremental":
        assert info2["bytes_read"] <= 2 * MiB, info2
    else:
        assert info2["reason"] and info2["bytes_new"] <= 2 * MiB, info2
    listed = js(d, "backup", "list", "--volume", "data")
    assert [b["id"] for b in listed] == [first["id"], second["id"]]
    # the data changes after the backup: the restore must not see it
    qemu_io(uri, "write -P 0x99 0 1M")

    cli(d, "backup", "restore", second["id"], "copy", "--wait", timeout=300)
    assert js(d, "volume", "get", "copy")["state"] == "detached"
    copy_uri = cli(d, "volume", "attach", "copy", "--node", "node-2").stdout.strip()
    assert volume_sha256(copy_uri, tmp_path) == want

    # offline: the repository checks out with the key alone (no --dir: no manager)
    p = subprocess.run(
        [sys.executable, "-m", "cargohold", "backup", "verify", f"file://{repo}",
         "--key-file", str(key), "--read-data", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["backups"] == 2, rep
