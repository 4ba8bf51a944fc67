"""The manager's own hands on a real backup repository (control/backup_repos.py over
cargohold.backup, a FileTarget in a tmp directory): a target added makes a repository or
opens the one there, refuses a wrong key or a missing directory with a clear 400-class
error, imports the catalog's backups (the DR story: a new manager sees them), deletes one
from the catalog, and runs GC."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.control.backup_records import BackupTarget, TargetSecrets
from cargohold.control.backup_repos import open_repository
from cargohold.control.repository import Repository as Records
from cargohold.control.requests import BackupTargetCreate
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import open_store
from cargohold.errors import InvalidArgument

KEY = bytes(range(32))
B64 = base64.b64encode(KEY).decode()


def secrets(key: str = B64) -> TargetSecrets:
    return TargetSecrets(name="t", repository_key=key)


def test_open_makes_or_opens_and_refuses_a_wrong_key_or_no_directory(tmp_path: Path) -> None:
    t = BackupTarget(name="t", url=f"file://{tmp_path}")
    with pytest.raises(InvalidArgument, match="holds no backup repository"):
        open_repository(t, secrets(), create=False)
    made = open_repository(t, secrets(), create=True)
    assert made.backups() == []
    assert open_repository(t, secrets(), create=False).backups() == []
    wrong = base64.b64encode(bytes(32)).decode()
    with pytest.raises(InvalidArgument, match="the repository key does not open the repository"):
        open_repository(t, secrets(wrong), create=True)
    (tmp_path / "plain").write_text("not a directory")
    gone = BackupTarget(name="t", url=f"file://{tmp_path}/plain/sub")
    with pytest.raises(InvalidArgument, match="backup target t"):
        open_repository(gone, secrets(), create=True)


async def test_a_new_manager_imports_deletes_and_collects_real_backups(tmp_path: Path) -> None:
    # an "old cluster" wrote a backup into the directory
    repo = Repository.init(FileTarget(str(tmp_path)), KEY)
    w = repo.start_backup("db", "uid-1", 8 << 20, "s1", 7, {"app": "db"}, None)
    w.write(0, os.urandom(1 << 20))
    info = w.commit()
    # a new manager, a fresh state store: adding the target finds it
    svc = Service(Records(open_store("memory:")), ManagerSettings(), "memory", "test")
    req = BackupTargetCreate(name="dr", url=f"file://{tmp_path}", repository_key=B64)
    await svc.create_backup_target(req)
    [b] = await svc.backups()
    assert b["repository_id"] == info.id and b["volume"] == "db" and b["imported"]
    assert b["info"]["generation"] == 7 and b["labels"] == {"app": "db"}
    assert b["size_bytes"] == 8 << 20 and b["state"] == "succeeded"
    gone = await svc.delete_backup(b["id"])
    assert gone["state"] == "deleted"
    assert Repository.open(FileTarget(str(tmp_path)), KEY).backups() == []
    counts = (await svc.gc_backup_target("dr"))["counts"]
    assert isinstance(counts, dict)
    assert (await svc.sync_backup_target("dr"))["imported"] == []
