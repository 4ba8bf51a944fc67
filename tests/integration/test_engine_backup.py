"""Backups and restores through real engines (engine/backup.py, engine/restore.py).

Three replica servers and the engine of ``vol`` speak mutual TLS with certificates of the
test CA; qemu-io writes known data over NBD; the engine's control socket runs ``backup``
and ``restore`` as the node agent does, with secrets naming a file target in a tmp dir.
Checked: the repository lists the backup (one GET), an incremental backup reads little, a
restore into a fresh engine's volume gives the snapshot's bytes (sha256) on every replica,
an engine SIGKILLed mid-backup leaves nothing listed and a re-run succeeds, and a flipped
byte in a pack fails the restore naming the chunk.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.constants import MIB
from cargohold.replica.client import ReplicaClient
from cargohold.security.tls import Credentials
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.processes import ServerProc

SIZE = 64 * MIB
KEY = bytes(range(32))


class Lab:
    """Replica servers over TLS; volumes with one replica on each; engines."""

    def __init__(self, root: Path, pki: Any) -> None:
        self.root, self.pki = root, pki
        self.servers: list[ServerProc] = []
        self.engines: list[EngineProc] = []
        for i in range(3):
            d = root / f"node-{i}"
            d.mkdir()
            self.servers.append(
                ServerProc([str(d)], tls_dir=pki.dir("replica", f"node-{i}")).start()
            )
        self.agent = Credentials.load(pki.dir("agent", "node-0"))

    def volume(self, name: str) -> list[str]:
        async def create() -> None:
            for i, s in enumerate(self.servers):
                c = await ReplicaClient.connect(
                    "127.0.0.1", s.port, tls=self.agent, replica=f"{name}-r{i}"
                )
                await c.create(f"{name}-r{i}", SIZE, volume=name)
                await c.close()

        asyncio.run(create())
        return [f"{name}-r{i}@127.0.0.1:{s.port}" for i, s in enumerate(self.servers)]

    def engine(self, name: str, specs: list[str], epoch: int = 1) -> EngineProc:
        e = EngineProc(
            name,
            specs,
            epoch,
            str(self.root),
            local=f"{name}-r0",
            tls_dir=self.pki.dir("engine", name),
        ).start()
        self.engines.append(e)
        return e

    def close(self) -> None:
        for e in self.engines:
            e.kill()
        for s in self.servers:
            s.kill()


@pytest.fixture
def lab(tmp_path, pki):
    lab = Lab(tmp_path, pki)
    yield lab
    lab.close()


@pytest.fixture
def repo_dir(tmp_path):
    d = tmp_path / "backups"
    Repository.init(FileTarget(str(d)), KEY)
    return d


def secrets(repo_dir: Path) -> dict[str, str]:
    return {"url": f"file://{repo_dir}", "repository_key": base64.b64encode(KEY).decode()}


def run_job(
    e: EngineProc, op: str, op_id: str, args: dict, sec: dict, timeout: float = 120
) -> dict:
    answer = e.ctl(op=op, id=op_id, args=args, secrets=sec)
    assert answer["ok"], answer
    st = e.wait_for(lambda s: s["jobs"][op_id]["state"] != "running", timeout, f"{op} {op_id}")
    return st["jobs"][op_id]  # type: ignore[no-any-return]


def nbd_sha(uri: str, tmp: Path) -> str:
    out = tmp / f"read-{time.monotonic_ns()}.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)], check=True)
    with open(out, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    out.unlink()
    return digest


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def backup_args(snapshot: str, record: str, **kw: Any) -> dict[str, Any]:
    args = {
        "backup": record,
        "target": "t",
        "snapshot": snapshot,
        "volume_id": "uid-vol",
        "parent": None,
        "parent_generation": None,
        "labels": {"app": "db"},
    }
    args.update(kw)
    return args


def test_backup_incremental_and_restore_give_the_snapshot_back(lab, repo_dir, tmp_path):
    need("qemu-io")
    need("qemu-img")
    e = lab.engine("vol", lab.volume("vol"))
    data = random_file(tmp_path / "data", 24 * MIB)
    qemu_io(e.uri, f"write -s {data} 0 24M", "write -P 0x5a 40M 4M", "write -z 8M 1M", "flush")
    assert e.ctl(op="snapshot", name="s1")["ok"]
    want1 = nbd_sha(e.uri, tmp_path)

    job = run_job(e, "backup", "op-1", backup_args("s1", "bk-1"), secrets(repo_dir))
    assert job["state"] == "succeeded", job
    r1 = job["result"]
    assert r1["mode"] == "full" and r1["reason"] == "no parent"
    assert r1["bytes_total"] >= 27 * MIB and r1["labels"]["app"] == "db"
    repo = Repository.open(FileTarget(str(repo_dir)), KEY)
    assert [b.id for b in repo.backups()] == [r1["id"]]

    # 1% of the volume changes after the snapshot: the head only, then a second snapshot
    more = random_file(tmp_path / "more", 640 * 1024)
    qemu_io(e.uri, f"write -s {more} 30M 640k", "write -z 2M 64k", "flush")
    assert e.ctl(op="snapshot", name="s2")["ok"]
    want2 = nbd_sha(e.uri, tmp_path)
    args = backup_args("s2", "bk-2", parent=r1["id"], parent_generation=r1["generation"])
    job = run_job(e, "backup", "op-2", args, secrets(repo_dir))
    assert job["state"] == "succeeded", job
    r2 = job["result"]
    assert r2["mode"] == "incremental", r2
    assert r2["parent"] == r1["id"]
    assert r2["bytes_read"] <= 0.02 * SIZE, r2  # only what changed was read
    assert r2["bytes_total"] == r1["bytes_total"] + 640 * 1024 - 64 * 1024

    # a fresh volume, restored through its own engine from the incremental backup
    e2 = lab.engine("new", lab.volume("new"))
    job = run_job(e2, "restore", "op-3", {"backup": r2["id"], "target": "t"}, secrets(repo_dir))
    assert job["state"] == "succeeded", job
    assert job["result"]["bytes_restored"] == SIZE
    assert nbd_sha(e2.uri, tmp_path) == want2
    # and the full one into another: the first snapshot's bytes
    e3 = lab.engine("old", lab.volume("old"))
    job = run_job(e3, "restore", "op-4", {"backup": r1["id"], "target": "t"}, secrets(repo_dir))
    assert job["state"] == "succeeded", job
    assert nbd_sha(e3.uri, tmp_path) == want1
    st = e3.ctl(op="status")
    assert {r["mode"] for r in st["replicas"]} == {"RW"}
    # a restore into a volume that holds data (a re-run): what the backup has as zeros is
    # zeroed, and the volume reads as the backup
    job = run_job(e2, "restore", "op-5", {"backup": r1["id"], "target": "t"}, secrets(repo_dir))
    assert job["state"] == "succeeded", job
    assert nbd_sha(e2.uri, tmp_path) == want1
    # a standby's apply (docs/disaster-recovery.md): the volume holding r1 becomes r2 by the
    # blocks that differ only (640 KiB written, 64 KiB zeroed); a re-run changes nothing more
    delta = {"backup": r2["id"], "base": r1["id"], "target": "t"}
    for op_id in ("op-6", "op-7"):
        job = run_job(e3, "restore", op_id, delta, secrets(repo_dir))
        assert job["state"] == "succeeded", job
        res = job["result"]
        assert res["changed_bytes"] == 704 * 1024 and res["zeroed_bytes"] == 64 * 1024, res
        assert res["fetched_bytes"] <= 704 * 1024, res
        assert nbd_sha(e3.uri, tmp_path) == want2


def test_bad_requests_fail_clearly_and_the_engine_keeps_serving(lab, repo_dir, tmp_path):
    need("qemu-io")
    e = lab.engine("vol", lab.volume("vol"))
    qemu_io(e.uri, "write -P 0x11 0 1M", "flush")
    e.ctl(op="snapshot", name="s1")
    bad = e.ctl(op="backup", id="x", args={"snapshot": "s1"}, secrets=secrets(repo_dir))
    assert not bad["ok"] and "backup" in bad["error"], bad
    job = run_job(e, "backup", "op-a", backup_args("nope", "bk-a"), secrets(repo_dir))
    assert job["state"] == "failed" and "no snapshot 'nope'" in job["error"], job
    wrong = dict(secrets(repo_dir), repository_key=base64.b64encode(bytes(32)).decode())
    job = run_job(e, "backup", "op-b", backup_args("s1", "bk-b"), wrong)
    assert job["state"] == "failed", job
    assert base64.b64encode(KEY).decode() not in e.output()  # the key is never logged
    assert Repository.open(FileTarget(str(repo_dir)), KEY).backups() == []
    qemu_io(e.uri, "read -P 0x11 0 1M")  # the volume is unaffected


def test_an_engine_killed_mid_backup_leaves_nothing_listed_and_a_rerun_succeeds(
    lab, repo_dir, tmp_path, monkeypatch
):
    need("qemu-io")
    specs = lab.volume("vol")
    monkeypatch.setenv("CARGOHOLD_ENGINE_BACKUP_RATE_MB", "4")  # slow enough to be caught
    e = lab.engine("vol", specs)
    data = random_file(tmp_path / "data", 32 * MIB)
    qemu_io(e.uri, f"write -s {data} 0 32M", "flush")
    e.ctl(op="snapshot", name="s1")
    want = nbd_sha(e.uri, tmp_path)
    assert e.ctl(op="backup", id="op-1", args=backup_args("s1", "bk-1"), secrets=secrets(repo_dir))[
        "ok"
    ]
    e.wait_for(lambda s: s["jobs"]["op-1"]["bytes_done"] >= 4 * MIB, 60, "a backup under way")
    e.kill()
    repo = Repository.open(FileTarget(str(repo_dir)), KEY)
    assert repo.backups() == []  # nothing half-written is listed
    monkeypatch.delenv("CARGOHOLD_ENGINE_BACKUP_RATE_MB")
    e2 = lab.engine("vol", specs, epoch=2)
    e2.wait_for(lambda s: s["robustness"] == "healthy", 60, "healthy")
    job = run_job(e2, "backup", "op-1", backup_args("s1", "bk-1"), secrets(repo_dir))
    assert job["state"] == "succeeded", job
    listed = repo.backups()
    assert [b.id for b in listed] == [job["result"]["id"]]
    # run again after it was committed (the agent lost the answer): the same backup
    again = run_job(e2, "backup", "op-1b", backup_args("s1", "bk-1"), secrets(repo_dir))
    assert again["result"]["id"] == job["result"]["id"] and len(repo.backups()) == 1
    e3 = lab.engine("new", lab.volume("new"))
    job = run_job(e3, "restore", "op-2", {"backup": listed[0].id, "target": "t"}, secrets(repo_dir))
    assert job["state"] == "succeeded", job
    assert nbd_sha(e3.uri, tmp_path) == want


def test_a_flipped_byte_in_a_pack_fails_the_restore_naming_the_chunk(lab, repo_dir, tmp_path):
    need("qemu-io")
    e = lab.engine("vol", lab.volume("vol"))
    data = random_file(tmp_path / "data", 8 * MIB)
    qemu_io(e.uri, f"write -s {data} 0 8M", "flush")
    e.ctl(op="snapshot", name="s1")
    job = run_job(e, "backup", "op-1", backup_args("s1", "bk-1"), secrets(repo_dir))
    assert job["state"] == "succeeded", job
    packs = sorted(p for p in (repo_dir / "packs").rglob("*") if p.is_file())
    assert packs
    victim = packs[0]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    e2 = lab.engine("new", lab.volume("new"))
    job = run_job(
        e2, "restore", "op-2", {"backup": job["result"]["id"], "target": "t"}, secrets(repo_dir)
    )
    assert job["state"] == "failed", job
    assert "chunk" in job["error"] and victim.name in job["error"], job["error"]
