"""Backups in the manager (control/service_backups.py, backup_results.py, assignments.py)
over the in-memory state store and the simulated cluster (sim.py), with an in-memory twin
of the repositories (backup_twin.py): targets checked and their secrets never leaking
(answers, records, repr, logs, stored operations — only the heartbeat's assignment carries
them), the parent choice, the states a backup and a restore go through, tenants, deletion,
and the catalog imported by sync."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from cargohold.control.api import build
from cargohold.control.backup_records import BackupState
from cargohold.control.model import OperationKind, keys
from cargohold.control.requests import (
    AttachRequest,
    BackupCreate,
    BackupTargetCreate,
    SnapshotCreate,
    TenantCreate,
    VolumeCreate,
)
from cargohold.control.service_backups import BackupCalls, choose_parent
from cargohold.errors import AlreadyExists, InvalidArgument, NotFound, WrongState
from cargohold.security.identity import Identity, Role
from tests.unit.control.backup_twin import KEY, OTHER_KEY, TwinTargets
from tests.unit.control.sim import Sim

GiB = 1 << 30
C = "c-" + "0" * 32
ADMIN = Identity(C, Role.ADMIN, "alice")
A = Identity(C, Role.CSI, "k8s-a", tenant="team-a")
B = Identity(C, Role.CSI, "k8s-b", tenant="team-b")
ACCESS, SECRET = "AKIAEXAMPLEACCESS", "wJalrXUtnFEMI-very-secret"


def target_req(name: str = "s3", url: str = "s3://bucket/prefix", key: str = KEY) -> Any:
    return BackupTargetCreate(
        name=name,
        url=url,
        endpoint="http://127.0.0.1:8333",
        access_key=ACCESS,
        secret_key=SECRET,
        repository_key=key,
    )


@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    s = Sim(monkeypatch, nodes=3)
    twins = TwinTargets()
    monkeypatch.setattr(BackupCalls, "open_backup_repository", staticmethod(twins))
    s.op_result = twins.engine_result
    s.twins = twins  # type: ignore[attr-defined]
    await s.start()
    await s.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await s.step(rounds=2)
    return s


async def backed_up(sim: Sim, volume: str = "data", target: str = "s3", **kw: Any) -> Any:
    op = await sim.service.create_backup(volume, BackupCreate(target=target, **kw))
    await sim.step(rounds=6)
    done = await sim.service.operation(op["id"])
    assert done["state"] == "succeeded", done
    return await sim.service.backup(op["args"]["backup"])


# --- targets and their secrets -----------------------------------------------------------


async def test_a_target_is_checked_and_its_secrets_never_leak(
    sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = (ACCESS, SECRET, KEY)
    req = target_req()
    assert not any(s in repr(req) or s in str(req.model_dump()) for s in secrets)
    t = await sim.service.create_backup_target(req)
    assert sim.twins.opened == [("s3://bucket/prefix", ACCESS)]  # type: ignore[attr-defined]
    assert t["has_credentials"] and t["last_sync"] is not None
    with pytest.raises(AlreadyExists):
        await sim.service.create_backup_target(target_req())
    # a backup runs: the heartbeat's assignment is the one place the secrets go (and the
    # admin's export of the key, which exists to keep a copy of it)
    op = await sim.service.create_backup("data", BackupCreate(target="s3"))
    seen: list[dict[str, str]] = []
    for _ in range(6):
        await sim.step()
        for n in sim.nodes.values():
            assert n.last is not None
            seen += [oa.secrets for oa in n.last.operations if oa.kind is OperationKind.BACKUP]
    assert seen and seen[0]["access_key"] == ACCESS and seen[0]["secret_key"] == SECRET
    assert seen[0]["repository_key"] == KEY and seen[0]["url"] == "s3://bucket/prefix"
    assert all(s not in repr(n.last) for n in sim.nodes.values() for s in secrets)
    # ... and nowhere else: the API's answers, the stored operation, other records, logs
    app = build(sim.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        answers = [
            (await c.get(p)).text
            for p in (
                "/api/v1/backup-targets",
                "/api/v1/backup-targets/s3",
                "/api/v1/backups",
                f"/api/v1/operations/{op['id']}",
                "/api/v1/operations",
            )
        ]
        r = await c.post("/api/v1/backup-targets/s3/export-key")
        assert r.json() == {"target": "s3", "repository_key": KEY}
        bad = dict(req.model_dump(), repository_key=KEY[:-4], access_key=ACCESS, name="x2")
        bad["secret_key"] = SECRET
        r = await c.post("/api/v1/backup-targets", json=bad)
        assert r.status_code == 422 and "32 bytes" in r.text
        answers.append(r.text)
        r = await c.post("/api/v1/backup-targets", json={**bad, "name": "Bad Name"})
        assert r.status_code == 422
        answers.append(r.text)
    stored = b""
    for prefix in (keys.OPERATIONS, keys.BACKUP_TARGETS, keys.BACKUPS, keys.SNAPSHOTS):
        stored += b"".join(e.value for e in await sim.repo.store.range(prefix))
    assert stored and answers
    for s in secrets:
        assert all(s not in a for a in answers), s
        assert s.encode() not in stored, s
        assert s not in caplog.text, s
    # the secrets are in the store (the manager needs them), under their own key only
    raw = (await sim.repo.store.get(keys.target_secrets("s3"))).value  # type: ignore[union-attr]
    assert SECRET.encode() in raw and KEY.encode() in raw
    assert SECRET not in repr(await sim.repo.target_secrets("s3"))


async def test_a_wrong_key_or_an_unreachable_target_is_a_clear_error(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    with pytest.raises(InvalidArgument, match="repository key does not open"):
        await sim.service.create_backup_target(target_req("again", key=OTHER_KEY))
    with pytest.raises(InvalidArgument, match="unreachable"):
        await sim.service.create_backup_target(target_req("down", url="s3://down/x"))
    assert [t["name"] for t in await sim.service.backup_targets()] == ["s3"]
    with pytest.raises(ValueError, match="32 bytes"):
        target_req(key="AAAA")
    for system in ("file:///", "file:///etc/backups", "file:///proc/x", "file:///usr/../etc"):
        with pytest.raises(ValueError, match="a file target may not be in"):
            target_req(url=system)
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX or file:///PATH"):
        target_req(url="http://x/y")
    with pytest.raises(ValueError, match="not in the url"):
        target_req(url="s3://ak:sk@bucket/p")


# --- backups: parent, states, snapshots ----------------------------------------------------


async def test_backups_are_incremental_to_the_newest_of_the_same_volume_and_target(
    sim: Sim,
) -> None:
    await sim.service.create_backup_target(target_req())
    await sim.service.create_backup_target(target_req("nfs", url="file:///mnt/b"))
    first = await backed_up(sim)
    assert first["state"] == "succeeded" and first["parent"] is None
    assert first["info"]["mode"] == "full" and first["repository_id"]
    assert first["snapshot"].startswith("backup-")  # a crash-consistent snapshot, taken first
    snaps = {s["name"]: s for s in await sim.service.snapshots("data")}
    assert snaps[first["snapshot"]]["state"] == "ready"
    second = await backed_up(sim)
    assert second["parent"] == first["repository_id"]
    ops = [o for o in await sim.service.operations("data") if o["kind"] == "backup"]
    assert ops[-1]["args"]["parent_generation"] == first["info"]["generation"]
    assert second["info"]["mode"] == "incremental"
    other = await backed_up(sim, target="nfs")  # another target: a full one
    assert other["parent"] is None
    # a named snapshot is used as it is
    await sim.service.create_snapshot("data", SnapshotCreate(name="mine"))
    await sim.step(rounds=6)
    named = await backed_up(sim, snapshot="mine", labels={"app": "db"})
    assert named["snapshot"] == "mine" and named["labels"] == {"app": "db"}
    assert named["parent"] == second["repository_id"]
    listed = await sim.service.backups(volume="data", target="s3")
    assert [b["id"] for b in listed] == [first["id"], second["id"], named["id"]]
    for b in listed:  # what recurring jobs rely on
        assert {"id", "volume", "target", "created", "state", "labels"} <= set(b)
    # a volume deleted and made again under the same name: not the same volume
    await sim.service.delete_volume("data")
    await sim.step(rounds=6)
    assert len(await sim.service.backups(volume="data")) == 4  # backups outlive volumes
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    fresh = await backed_up(sim)
    assert fresh["parent"] is None and fresh["volume_id"] != first["volume_id"]


def test_choose_parent_takes_only_usable_backups() -> None:
    from cargohold.control.backup_records import Backup

    def b(i: int, **kw: Any) -> Backup:
        base: dict[str, Any] = {
            "id": f"bk-{i}",
            "volume": "v",
            "volume_id": "u1",
            "target": "t",
            "state": BackupState.SUCCEEDED,
            "repository_id": f"r{i}",
            "info": {"generation": i},
            "created": float(i),
        }
        return Backup(**{**base, **kw})

    ok = b(1)
    assert choose_parent([ok, b(2, state=BackupState.FAILED)], "u1", "t") is ok
    assert choose_parent([ok, b(3, volume_id="u2"), b(4, target="x")], "u1", "t") is ok
    assert choose_parent([ok, b(5, repository_id=""), b(6, info={})], "u1", "t") is ok
    assert choose_parent([b(7), ok], "u1", "t").id == "bk-7"  # type: ignore[union-attr]
    assert choose_parent([], "u1", "t") is None


async def test_a_failed_snapshot_or_engine_fails_the_backup(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    for n in sim.nodes.values():
        n.fail_ops = True
    op = await sim.service.create_backup("data", BackupCreate(target="s3"))
    bid = op["args"]["backup"]
    assert (await sim.service.backup(bid))["state"] == "pending"
    await sim.step(rounds=6)
    b = await sim.service.backup(bid)
    assert b["state"] == "failed" and "snapshot" in b["error"] and "boom" in b["error"]
    assert (await sim.service.operation(op["id"]))["state"] == "failed"
    with pytest.raises(NotFound):
        await sim.service.create_backup("data", BackupCreate(target="nope"))
    with pytest.raises(NotFound):
        await sim.service.create_backup("data", BackupCreate(target="s3", snapshot="nope"))


async def test_delete_removes_it_from_the_repository_then_the_record(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    repo = sim.twins.repos["s3://bucket/prefix"]  # type: ignore[attr-defined]
    op = await sim.service.create_backup("data", BackupCreate(target="s3"))
    with pytest.raises(WrongState, match="pending"):
        await sim.service.delete_backup(op["args"]["backup"])
    await sim.step(rounds=6)
    b = await sim.service.backup(op["args"]["backup"])
    assert list(repo.infos) == [b["repository_id"]]
    gone = await sim.service.delete_backup(b["id"])
    assert gone["state"] == "deleted" and repo.infos == {}
    with pytest.raises(NotFound):
        await sim.service.backup(b["id"])
    assert (await sim.service.gc_backup_target("s3"))["target"] == "s3" and repo.gcs == 1


# --- restore -------------------------------------------------------------------------------


async def test_restore_makes_a_new_volume_usable_only_once_it_succeeded(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    b = await backed_up(sim)
    with pytest.raises(InvalidArgument, match="at least as large"):
        await sim.service.create_volume(
            VolumeCreate(name="small", size_bytes=GiB // 2, source={"backup": b["id"]})
        )
    v = await sim.service.create_volume(
        VolumeCreate(name="back", size_bytes=GiB, source={"backup": b["id"]})
    )
    assert v["robustness"] == "unknown"  # never "healthy" before it is restored
    assert v["state"] == "restoring" and v["source"] == {
        "volume": None,
        "snapshot": None,
        "backup": b["id"],
        "target": "s3",
    }
    ops = [o for o in await sim.service.operations("back") if o["kind"] == "restore"]
    assert ops[0]["args"] == {"backup": b["repository_id"], "target": "s3"}
    with pytest.raises(WrongState, match="restored"):
        await sim.service.attach("back", AttachRequest(node="node-1"))
    with pytest.raises(WrongState, match="in use by restores"):
        await sim.service.delete_backup_target("s3")
    for _ in range(8):
        await sim.step()
        v = await sim.service.volume("back")
        assert v["state"] != "restoring" or v["robustness"] != "healthy", v
    assert v["state"] == "detached" and v["robustness"] == "healthy"
    await sim.service.attach("back", AttachRequest(node="node-1"))
    # a failed restore is failed for good, never usable
    for n in sim.nodes.values():
        n.fail_ops = True
    await sim.service.create_volume(
        VolumeCreate(name="bad", size_bytes=GiB, source={"backup": b["id"]})
    )
    await sim.step(rounds=8)
    v = await sim.service.volume("bad")
    assert v["state"] == "failed" and v["error"].startswith("restore failed: boom"), v
    assert v["robustness"] == "faulted"
    with pytest.raises(WrongState):
        await sim.service.attach("bad", AttachRequest(node="node-1"))
    with pytest.raises(ValueError, match="either a volume"):
        VolumeCreate(name="x", size_bytes=GiB, source={"volume": "data", "backup": b["id"]})


# --- tenants -------------------------------------------------------------------------------


async def test_a_tenant_sees_backs_up_and_restores_only_its_own(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    for t in ("team-a", "team-b"):
        await sim.service.create_tenant(TenantCreate(name=t))
    await sim.service.create_volume(VolumeCreate(name="va", size_bytes=GiB), A)
    await sim.service.create_volume(VolumeCreate(name="vb", size_bytes=GiB), B)
    await sim.step(rounds=2)
    with pytest.raises(NotFound):
        await sim.service.create_backup("vb", BackupCreate(target="s3"), A)
    op = await sim.service.create_backup("va", BackupCreate(target="s3"), A)
    await sim.service.create_backup("vb", BackupCreate(target="s3"), B)
    await sim.step(rounds=6)
    ba = await sim.service.backup(op["args"]["backup"], A)
    assert ba["tenant"] == "team-a" and ba["state"] == "succeeded"
    assert [b["volume"] for b in await sim.service.backups(A)] == ["va"]
    assert [b["volume"] for b in await sim.service.backups(B)] == ["vb"]
    assert len(await sim.service.backups(ADMIN)) == 2
    with pytest.raises(NotFound, match=f"backup {ba['id']} not found"):
        await sim.service.backup(ba["id"], B)
    with pytest.raises(NotFound):
        await sim.service.delete_backup(ba["id"], B)
    with pytest.raises(NotFound):  # another tenant's backup: as if it did not exist
        await sim.service.create_volume(
            VolumeCreate(name="steal", size_bytes=GiB, source={"backup": ba["id"]}), B
        )
    with pytest.raises(InvalidArgument, match="another tenant"):  # the admin cannot move it
        await sim.service.create_volume(
            VolumeCreate(
                name="moved", size_bytes=GiB, source={"backup": ba["id"]}, tenant="team-b"
            ),
            ADMIN,
        )
    v = await sim.service.create_volume(
        VolumeCreate(name="va2", size_bytes=GiB, source={"backup": ba["id"]}), A
    )
    assert v["tenant"] == "team-a"


# --- the catalog is the truth ----------------------------------------------------------------


async def test_sync_imports_the_catalogs_backups_once_and_keeps_missing_ones(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    mine = await backed_up(sim)
    repo = sim.twins.repos["s3://bucket/prefix"]  # type: ignore[attr-defined]
    old = repo.add(
        volume="oldvol",
        volume_id="elsewhere",
        labels={"app": "db", "cargohold.io/record": "bk-oldvol-20260101000000-abcd"},
    )
    got = await sim.service.sync_backup_target("s3")
    assert got["imported"] and got["missing"] == [] and got["backups"] == 2
    again = await sim.service.sync_backup_target("s3")
    assert again["imported"] == []
    assert got["imported"] == ["bk-oldvol-20260101000000-abcd"]  # the old cluster's id
    imported = await sim.service.backup(got["imported"][0])
    assert imported["repository_id"] == old["id"] and imported["imported"]
    assert imported["tenant"] is None and imported["state"] == "succeeded"
    assert imported["labels"] == {"app": "db"}
    # a backup gone from the catalog: reported, its record kept (invariant 7)
    del repo.infos[mine["repository_id"]]
    assert (await sim.service.sync_backup_target("s3"))["missing"] == [mine["id"]]
    assert (await sim.service.backup(mine["id"]))["state"] == "succeeded"
    # a new cluster (a new manager, the same repository): adding the target imports all
    await sim.service.delete_backup_target("s3")
    assert await sim.service.backups() == []
    await sim.service.create_backup_target(target_req("dr"))
    assert [b["repository_id"] for b in await sim.service.backups()] == [old["id"]]
    v = await sim.service.create_volume(
        VolumeCreate(name="revived", size_bytes=GiB, source={"backup": got["imported"][0]})
    )
    assert v["state"] == "restoring"


async def test_sync_does_not_import_a_backup_of_ours_still_being_recorded(sim: Sim) -> None:
    await sim.service.create_backup_target(target_req())
    repo = sim.twins.repos["s3://bucket/prefix"]  # type: ignore[attr-defined]
    op = await sim.service.create_backup("data", BackupCreate(target="s3"))
    repo.add(volume="data", labels={"cargohold.io/record": op["args"]["backup"]})
    assert (await sim.service.sync_backup_target("s3"))["imported"] == []
    assert [b["id"] for b in await sim.service.backups()] == [op["args"]["backup"]]
