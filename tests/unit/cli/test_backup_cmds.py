"""``cargohold backup-target`` and ``cargohold backup`` against a real manager app over the
in-memory store and the simulated cluster (the repositories: backup_twin.py), and
``backup verify`` offline against a real repository in a tmp directory: secrets come from
files (never the command line), a generated key file is 0600 and never overwritten, the
key is exported only to a new 0600 file or to stdout with a warning, ``-o json`` prints
the API's JSON, and verify names a damaged pack and exits 1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.cli.main import app as cli
from cargohold.control.api import build
from cargohold.control.client import ManagerClient
from cargohold.control.service import VolumeCreate
from cargohold.control.service_backups import BackupCalls
from tests.unit.control.backup_twin import TwinTargets
from tests.unit.control.sim import Sim

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

GiB = 1 << 30
ENV = {"COLUMNS": "200", "CARGOHOLD_API": None, "CARGOHOLD_DIR": None}


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    s = Sim(monkeypatch, nodes=3)
    twins = TwinTargets()
    monkeypatch.setattr(BackupCalls, "open_backup_repository", staticmethod(twins))
    s.op_result = twins.engine_result
    s.twins = twins  # type: ignore[attr-defined]

    async def setup() -> None:
        await s.start()
        await s.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
        await s.step(rounds=2)

    asyncio.run(setup())
    client = TestClient(build(s.service))

    def discover(api: str | None = None, dir: str | None = None, **kw: Any) -> ManagerClient:
        return ManagerClient("http://t", transport=client._transport, poll_interval=0.0)

    monkeypatch.setattr(ManagerClient, "discover", staticmethod(discover))
    for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CARGOHOLD_BACKUP_ACCESS_KEY"):
        monkeypatch.delenv(v, raising=False)
    return s


def run(*args: str, code: int = 0) -> Any:
    r = CliRunner().invoke(cli, list(args), env=ENV)
    assert r.exit_code == code, r.output
    return r


def test_targets_take_secrets_from_files_and_keep_the_key_file_safe(
    sim: Sim, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AK1\naws_secret_access_key = SK1\n")
    key = tmp_path / "s3.key"
    r = run("backup-target", "add", "s3", "s3://bucket/p", "--credentials-file", str(creds),
            "--generate-key", str(key), "-o", "json")  # fmt: skip
    t = json.loads(r.stdout)
    assert t["name"] == "s3" and t["has_credentials"] and "SK1" not in r.output
    assert "without it nobody" in r.stderr  # the loss warning
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(base64.b64decode(key.read_text())) == 32
    assert sim.twins.opened == [("s3://bucket/p", "AK1")]  # type: ignore[attr-defined]
    before = key.read_text()
    r = run("backup-target", "add", "s4", "file:///x", "--generate-key", str(key), code=2)
    assert "never overwritten" in r.output and key.read_text() == before
    run("backup-target", "add", "s5", "file:///x", code=2)  # no key: a usage error
    plain = tmp_path / "plain"
    plain.write_text("access_key=AK2\nsecret_key=SK2\n")
    run("backup-target", "add", "other", "s3://bucket/q", "--credentials-file", str(plain),
        "--key-file", str(key))  # fmt: skip
    assert sim.twins.opened[-1] == ("s3://bucket/q", "AK2")  # type: ignore[attr-defined]
    listed = json.loads(run("backup-target", "list", "-o", "json").stdout)
    assert [t["name"] for t in listed] == ["other", "s3"]
    # export: to a new 0600 file, or to stdout with a warning; never silently
    run("backup-target", "export-key", "s3", code=2)
    out = tmp_path / "copy.key"
    run("backup-target", "export-key", "s3", "--to", str(out))
    assert out.read_text().strip() == before.strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    r = run("backup-target", "export-key", "s3", "--stdout")
    assert r.stdout.strip() == before.strip() and "anyone who reads it" in r.stderr
    run("backup-target", "delete", "other")
    run("backup-target", "get", "other", code=4)


def test_backup_create_list_get_restore_delete(sim: Sim, tmp_path: Path) -> None:
    key = tmp_path / "k"
    run("backup-target", "add", "nfs", "file:///mnt/b", "--generate-key", str(key))
    r = run("backup", "create", "data", "--target", "nfs", "--label", "app=db", "-o", "json")
    b = json.loads(r.stdout)
    assert b["state"] == "pending" and b["labels"] == {"app": "db"}
    asyncio.run(sim.step(rounds=6))
    [got] = json.loads(run("backup", "list", "--volume", "data", "-o", "json").stdout)
    assert got["id"] == b["id"] and got["state"] == "succeeded"
    assert json.loads(run("backup", "get", b["id"], "-o", "json").stdout)["info"]["mode"] == "full"
    table = run("backup", "list").stdout
    assert b["id"] in table and "succeeded" in table
    v = json.loads(run("backup", "restore", b["id"], "copy", "-o", "json").stdout)
    assert v["state"] == "restoring" and v["size_bytes"] == GiB
    asyncio.run(sim.step(rounds=8))
    gone = json.loads(run("backup", "delete", b["id"], "-o", "json").stdout)
    assert gone["state"] == "deleted"
    run("backup", "get", b["id"], code=4)


def test_verify_runs_offline_and_names_a_damaged_pack(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    key = tmp_path / "k"
    raw = bytes(range(32))
    key.write_bytes(base64.b64encode(raw))
    repo = Repository.init(FileTarget(str(root)), raw)
    w = repo.start_backup("db", "u", 8 << 20, "s", 1, {}, None)
    w.write(0, os.urandom(2 << 20))
    info = w.commit()
    r = run("backup", "verify", f"file://{root}", "--key-file", str(key), "--read-data",
            "-o", "json")  # fmt: skip
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["backups"] == 1 and rep["blobs_read"] >= 1
    [pack] = [p for p in root.rglob("*") if p.is_file() and "packs" in p.parts]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    r = run("backup", "verify", f"file://{root}", "--key-file", str(key), "--read-data",
            "--backup", info.id, "-o", "json", code=1)  # fmt: skip
    rep = json.loads(r.stdout)
    assert not rep["ok"] and any(pack.name in o for o in rep["bad_objects"]), rep
