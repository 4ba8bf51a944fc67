"""The backup repository shared by real processes on a real directory (FileTarget): GC in
this process while a backup runs in another one, and a backup process SIGKILLed half-way.

The child processes run ``writer_child`` below (``python -m`` this module), with the key and
the data in files; they report through files in the test's directory (polled with deadlines).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cargohold.backup import gc
from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.backup.verify import verify
from tests.support.polling import wait_until

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[3]


def writer_child(repo_dir: str, key_file: str, data_file: str, work: str, lease_ttl: float) -> None:
    """Back up ``data_file``; say 'written' once every byte is handed over and its packs are
    stored, then wait for 'go' before committing; print the BackupInfo as JSON."""
    repo = Repository.open(FileTarget(repo_dir), Path(key_file).read_bytes(), lease_ttl=lease_ttl)
    data = Path(data_file).read_bytes()
    w = repo.start_backup("child", "child", len(data), "s", 1, {}, None)
    for off in range(0, len(data), 4 * MiB):
        w.write(off, data[off : off + 4 * MiB])
    w._flush_cell()
    w._drain(block=True)
    w._seal_pack()
    w._check_uploads(block=True)
    Path(work, "written.tmp").write_text(w.lease.name)
    Path(work, "written.tmp").rename(Path(work, "written"))
    while not Path(work, "go").exists():
        time.sleep(0.02)
    print(json.dumps(w.commit().to_dict()), flush=True)


def spawn(tmp: Path, data: bytes, lease_ttl: float) -> subprocess.Popen[str]:
    (tmp / "data").write_bytes(data)
    code = (
        "import sys; from tests.integration.backup.test_repository_processes import writer_child; "
        "writer_child(*sys.argv[1:5], float(sys.argv[5]))"
    )
    args = [str(tmp / "repo"), str(tmp / "key"), str(tmp / "data"), str(tmp), str(lease_ttl)]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def packs(tmp: Path) -> set[str]:
    return {
        p.relative_to(tmp / "repo").as_posix()
        for p in (tmp / "repo" / "packs").rglob("*")
        if p.is_file()
    }


def test_gc_in_this_process_spares_what_a_backup_in_another_reuses(tmp_path: Path) -> None:
    key = os.urandom(32)
    (tmp_path / "key").write_bytes(key)
    repo = Repository.init(FileTarget(tmp_path / "repo"), key, pack_bytes=4 * MiB)
    data = os.urandom(8 * MiB)
    w = repo.start_backup("old", "old", len(data), "s", 1, {}, None)
    w.write(0, data)
    old = w.commit()
    child = spawn(tmp_path, data, lease_ttl=30)
    try:
        wait_until(
            lambda: (tmp_path / "written").exists() or child.poll() is not None,
            60,
            "the child's writes",
        )
        assert child.poll() is None
        repo.delete(old.id)  # the child's backup reuses old's chunks (dedup)
        before = packs(tmp_path)
        r = repo.gc()
        assert r["deferred"] and r["packs_deleted"] == 0 and packs(tmp_path) == before
        (tmp_path / "go").touch()
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        info = json.loads(out)
        assert info["chunks_reused"] == 2 and info["chunks_new"] == 0
        r = repo.gc()
        assert r["packs_deleted"] == 0 and not r["deferred"]
        restored = b"".join(p for _, p in repo.restore_reader(info["id"]).read_all())
        assert restored == data
        assert verify(repo, read_data=True).ok
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_backup_process_killed_half_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    (tmp_path / "key").write_bytes(key)
    repo = Repository.init(FileTarget(tmp_path / "repo"), key, pack_bytes=4 * MiB)
    child = spawn(tmp_path, os.urandom(12 * MiB), lease_ttl=1.5)
    try:
        wait_until(
            lambda: (tmp_path / "written").exists() or child.poll() is not None,
            60,
            "the child's writes",
        )
        lease = (tmp_path / "written").read_text()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    orphans = packs(tmp_path)
    assert len(orphans) == 1 and (tmp_path / "repo" / lease).exists()  # 3 chunks, one pack
    assert repo.backups() == []  # nothing half-written is listed
    rep = verify(repo)
    assert rep.ok and rep.backups == 0 and any("in no index" in w for w in rep.warnings)
    monkeypatch.setattr(gc, "SKEW", 0.0)  # this test's clocks are one clock
    r = repo.gc()
    assert r["packs_deleted"] == 0  # the dead writer's lease has not expired yet
    r = wait_until(
        lambda: (lambda g: g if g["packs_deleted"] else None)(repo.gc()),
        30,
        "GC after the lease expired",
    )
    assert r["packs_deleted"] == 1 and packs(tmp_path) == set()
    data = os.urandom(4 * MiB)
    w = repo.start_backup("next", "next", len(data), "s", 1, {}, None)  # the next run completes
    w.write(0, data)
    info = w.commit()
    assert b"".join(p for _, p in repo.restore_reader(info.id).read_all()) == data
