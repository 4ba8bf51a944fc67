"""Backups under target faults, through a local cluster of real processes (manager, three
agents, their replica servers and engines, mutual TLS) and the ``cargohold`` CLI.

- S3: a target on a real SeaweedFS (tests/support/s3_server.py): a full and an incremental
  backup, the incremental restored and compared by sha256, with no LIST request among them
  (SeaweedFS's request counters); then the faults a target can
  have: wrong credentials (refused when added, nothing recorded), a bucket deleted under the
  target, the server gone. Each failed backup says why on its record, the volume stays
  healthy and usable (written and read after), and the repository's catalog lists only the
  backups that succeeded.
- A file target on a small loop-mounted ext4 that fills up (root only): the same checks.

SIGKILLs of the engine, the agent and the manager, and GC during a backup:
tests/probe/test_backup_kills.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.support.backup_cluster import (
    MiB,
    backup_cluster,
    catalog,
    failed_backup,
    fill,
    jcli,
    still_usable,
    volume_sha256,
)
from tests.support.cli import cli, js
from tests.support.nbd_clients import qemu_io
from tests.support.s3_server import S3Server


@pytest.fixture
def cluster() -> Iterator[tuple[LocalCluster, Path]]:
    with backup_cluster() as c:
        yield c


def test_s3_through_the_cluster_and_its_faults(
    cluster: tuple[LocalCluster, Path], tmp_path: Path
) -> None:
    _, d = cluster
    with S3Server(metrics=True) as s3:
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
        before = s3.requests()
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
        after = s3.requests()
        used = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        print(f"S3 requests of a full and an incremental backup and a restore: {used}")
        assert used.get("LIST", 0) == 0, used  # no LIST on the backup and restore paths
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
