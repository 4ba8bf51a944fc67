"""CSI snapshots that are backups, through the Controller with an in-memory manager: the
VolumeSnapshotClass parameters are checked (InvalidArgument names the parameter),
CreateSnapshot is idempotent by name and reports ready_to_use only once the backup
succeeded, a failed backup is an error and the next call starts anew, DeleteSnapshot
deletes the backup, ListSnapshots lists it, and CreateVolume from it restores it (size
checked). The same through real processes: tests/e2e/test_csi_backups.py."""

from __future__ import annotations

import itertools
from typing import Any

import grpc
import pytest

from cargohold.csi import parameters as P
from cargohold.csi.controller import Controller
from cargohold.csi.controller_backups import SNAPSHOT_LABEL
from cargohold.csi.publications import Publications
from cargohold.errors import NotFound, WrongState
from tests.unit.csi.test_controller import Abort, Context, FakeManager, MiB, cap, pb

BACKUP = {"type": "backup", "backupTarget": "nfs"}


class BackupManager(FakeManager):
    """FakeManager plus the backup half of ``ManagerClient``: targets, backups, restore."""

    def __init__(self) -> None:
        super().__init__()
        self.targets = {"nfs"}
        self.backups_: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.created: list[dict[str, Any]] = []

    def backups(self, volume: str | None = None, target: str | None = None) -> list[Any]:
        return [
            dict(b)
            for b in self.backups_.values()
            if (volume is None or b["volume"] == volume)
            and (target is None or b["target"] == target)
        ]

    def backup(self, bid: str) -> dict[str, Any]:
        if bid not in self.backups_:
            raise NotFound(f"backup {bid} not found")
        return dict(self.backups_[bid])

    def create_backup(
        self, volume: str, target: str, snapshot: str | None = None, labels: Any = None
    ) -> dict[str, Any]:
        if target not in self.targets:
            raise NotFound(f"backup target {target} not found")
        bid = f"bk-{volume}-2026-{next(self.ids):04x}"
        self.backups_[bid] = {
            "id": bid, "volume": volume, "target": target, "state": "running",
            "size_bytes": self.vols[volume]["size_bytes"], "labels": dict(labels or {}),
            "created": 1.0e9, "error": "", "info": {},
        }  # fmt: skip
        return {"id": "op-1", "kind": "backup", "args": {"backup": bid}}

    def delete_backup(self, bid: str) -> dict[str, Any]:
        b = self.backup(bid)
        if b["state"] in ("pending", "running"):
            raise WrongState(f"backup {bid} is running")
        del self.backups_[bid]
        return {**b, "state": "deleted"}

    def create_volume(self, name: str, size: int, **kw: Any) -> dict[str, Any]:
        self.created.append({"name": name, "size": size, **kw})
        self.add(name)
        self.vols[name].update(size_bytes=size, source=kw.get("source"))
        if kw.get("source", {}).get("backup"):
            b = self.backups_[kw["source"]["backup"]]
            self.vols[name]["source"] = {"backup": b["id"], "target": b["target"]}
        return self.volume(name)


@pytest.fixture
def mgr() -> BackupManager:
    m = BackupManager()
    m.add("pvc-a")
    return m


@pytest.fixture
def ctl(mgr: BackupManager) -> Controller:
    return Controller(mgr, publications=Publications(), timeout=1)  # type: ignore[arg-type]


def snap(ctl: Controller, name: str = "snapshot-1", vol: str = "pvc-a", **params: str) -> Any:
    req = pb.CreateSnapshotRequest(
        source_volume_id=vol, name=name, parameters=params or dict(BACKUP)
    )
    return ctl.CreateSnapshot(req, Context()).snapshot


def abort_of(fn: Any, req: Any) -> Abort:
    with pytest.raises(Abort) as e:
        fn(req, Context())
    return e.value


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"type": "tape"}, "type='tape'"),
        ({"type": "backup"}, "backupTarget is required"),
        ({"type": "backup", "backupTarget": "Bad_Name!"}, "backupTarget='Bad_Name!'"),
        ({"backupTarget": "nfs"}, "only with type=backup"),
        ({"type": "backup", "backupTarget": "nfs", "colour": "red"}, "colour"),
    ],
)
def test_bad_snapshot_class_parameters_name_the_parameter(
    ctl: Controller, params: dict[str, str], names: str
) -> None:
    req = pb.CreateSnapshotRequest(source_volume_id="pvc-a", name="s1", parameters=params)
    e = abort_of(ctl.CreateSnapshot, req)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and names in e.message, e.message


def test_parameters_parse() -> None:
    assert not P.SnapshotParameters.parse({}).is_backup
    assert not P.SnapshotParameters.parse({"type": "snapshot"}).is_backup
    got = P.SnapshotParameters.parse({**BACKUP, "csi.storage.k8s.io/volumesnapshot/name": "x"})
    assert got.backup_target == "nfs"
    sid = P.backup_snapshot_id("nfs", "bk-pvc-a-1")
    assert P.split_backup_snapshot_id(sid) == ("nfs", "bk-pvc-a-1")
    assert P.split_snapshot_id(sid) is None  # never read as VOLUME/SNAPSHOT
    assert P.split_backup_snapshot_id("pvc-a/snap") is None
    assert P.split_backup_snapshot_id("backup:nfs") is None


def test_unknown_target_is_invalid_argument(ctl: Controller) -> None:
    req = pb.CreateSnapshotRequest(
        source_volume_id="pvc-a", name="s1", parameters={"type": "backup", "backupTarget": "s3"}
    )
    e = abort_of(ctl.CreateSnapshot, req)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "backupTarget='s3'" in e.message


def test_create_is_idempotent_and_ready_once_the_backup_succeeded(
    mgr: BackupManager, ctl: Controller
) -> None:
    first = snap(ctl)
    target, bid = P.split_backup_snapshot_id(first.snapshot_id) or ("", "")
    assert target == "nfs" and not first.ready_to_use
    assert mgr.backups_[bid]["labels"] == {SNAPSHOT_LABEL: "snapshot-1"}
    again = snap(ctl)
    assert again.snapshot_id == first.snapshot_id and not again.ready_to_use
    assert len(mgr.backups_) == 1
    mgr.backups_[bid]["state"] = "succeeded"
    done = snap(ctl)
    assert done.ready_to_use and done.size_bytes == 64 * MiB
    assert done.source_volume_id == "pvc-a"
    assert done.creation_time.seconds == first.creation_time.seconds == 10**9
    # the same name for another volume, or to another target: ALREADY_EXISTS
    mgr.add("pvc-b")
    assert (
        abort_of(
            ctl.CreateSnapshot,
            pb.CreateSnapshotRequest(
                source_volume_id="pvc-b", name="snapshot-1", parameters=BACKUP
            ),
        ).code
        == grpc.StatusCode.ALREADY_EXISTS
    )


def test_a_failed_backup_is_an_error_then_retried(mgr: BackupManager, ctl: Controller) -> None:
    first = snap(ctl)
    bid = first.snapshot_id.rsplit(":", 1)[1]
    mgr.backups_[bid].update(state="failed", error="target unreachable")
    req = pb.CreateSnapshotRequest(source_volume_id="pvc-a", name="snapshot-1", parameters=BACKUP)
    e = abort_of(ctl.CreateSnapshot, req)
    assert e.code == grpc.StatusCode.INTERNAL and "target unreachable" in e.message
    assert bid not in mgr.backups_
    retry = snap(ctl)
    assert retry.snapshot_id != first.snapshot_id and len(mgr.backups_) == 1


def test_delete_snapshot_deletes_the_backup(mgr: BackupManager, ctl: Controller) -> None:
    sid = snap(ctl).snapshot_id
    bid = sid.rsplit(":", 1)[1]
    req = pb.DeleteSnapshotRequest(snapshot_id=sid)
    assert abort_of(ctl.DeleteSnapshot, req).code == grpc.StatusCode.ABORTED  # still running
    assert bid in mgr.backups_
    mgr.backups_[bid]["state"] = "succeeded"
    ctl.DeleteSnapshot(req, Context())
    assert bid not in mgr.backups_
    ctl.DeleteSnapshot(req, Context())  # gone already: fine


def test_list_snapshots_lists_backups(mgr: BackupManager, ctl: Controller) -> None:
    mgr.snapshots = lambda vid: []  # type: ignore[attr-defined]
    sid = snap(ctl).snapshot_id
    mgr.backups_[sid.rsplit(":", 1)[1]]["state"] = "succeeded"
    every = ctl.ListSnapshots(pb.ListSnapshotsRequest(), Context())
    assert [e.snapshot.snapshot_id for e in every.entries] == [sid]
    one = ctl.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=sid), Context())
    assert [e.snapshot.snapshot_id for e in one.entries] == [sid]
    by_vol = ctl.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id="pvc-a"), Context())
    assert [e.snapshot.ready_to_use for e in by_vol.entries] == [True]
    other = ctl.ListSnapshots(
        pb.ListSnapshotsRequest(snapshot_id="backup:s3:" + sid.rsplit(":", 1)[1]), Context()
    )
    assert not other.entries


def test_create_volume_from_a_backup_restores_it(mgr: BackupManager, ctl: Controller) -> None:
    sid = snap(ctl).snapshot_id
    bid = sid.rsplit(":", 1)[1]
    src = pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=sid))

    def create(name: str, size: int = 0) -> Any:
        return pb.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap()],
            capacity_range=pb.CapacityRange(required_bytes=size),
            volume_content_source=src,
        )

    e = abort_of(ctl.CreateVolume, create("pvc-r"))
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION and "running" in e.message
    mgr.backups_[bid]["state"] = "succeeded"
    small = create("pvc-r", MiB)
    small.capacity_range.limit_bytes = MiB
    assert abort_of(ctl.CreateVolume, small).code == grpc.StatusCode.OUT_OF_RANGE
    vol = ctl.CreateVolume(create("pvc-r"), Context()).volume  # unset: the default, 1 GiB
    assert mgr.created[-1]["source"] == {"backup": bid}
    assert mgr.created[-1]["size"] == vol.capacity_bytes == P.DEFAULT_SIZE
    exact = ctl.CreateVolume(create("pvc-x", 64 * MiB), Context()).volume
    assert exact.capacity_bytes == 64 * MiB
    assert vol.content_source.snapshot.snapshot_id == sid
    again = ctl.CreateVolume(create("pvc-r"), Context()).volume  # idempotent
    assert again.volume_id == "pvc-r" and len(mgr.created) == 2
    gone = src.snapshot.snapshot_id.replace(bid, "bk-nothing-1")
    src.snapshot.snapshot_id = gone
    assert abort_of(ctl.CreateVolume, create("pvc-s")).code == grpc.StatusCode.NOT_FOUND


def test_a_failed_restore_is_internal_and_removed(mgr: BackupManager, ctl: Controller) -> None:
    sid = snap(ctl).snapshot_id
    bid = sid.rsplit(":", 1)[1]
    mgr.backups_[bid]["state"] = "succeeded"
    deleted: list[str] = []
    plain = mgr.create_volume

    def failing(name: str, size: int, **kw: Any) -> dict[str, Any]:
        plain(name, size, **kw)
        mgr.vols[name].update(state="failed", error="restore failed: chunk 3f2a… bad checksum")
        return mgr.volume(name)

    mgr.create_volume = failing  # type: ignore[method-assign]
    mgr.delete_volume = lambda name: deleted.append(name)  # type: ignore[attr-defined]
    src = pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=sid))
    req = pb.CreateVolumeRequest(
        name="pvc-r", volume_capabilities=[cap()], volume_content_source=src
    )
    e = abort_of(ctl.CreateVolume, req)
    assert e.code == grpc.StatusCode.INTERNAL and "bad checksum" in e.message, e.message
    assert deleted == ["pvc-r"]
