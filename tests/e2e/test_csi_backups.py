"""CSI snapshots that are backups, through the real driver over its gRPC socket against a
local cluster of real processes (manager, three agents, engines, mutual TLS), to a file
target in a tmp directory: CreateVolume, data written through the engine's NBD endpoint
(nbdcopy), CreateSnapshot with ``type: backup`` polled until ready_to_use, ListSnapshots,
CreateVolume from it (a restore) read back with its sha256 equal to the source's, and
DeleteSnapshot removing the backup from the manager's list and the repository's catalog.
Bad VolumeSnapshotClass parameters are INVALID_ARGUMENT naming the parameter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.cli.backup_credentials import read_key
from cargohold.csi import stubs
from cargohold.launcher.cluster import LocalCluster
from tests.e2e.test_csi import Driver, block_cap
from tests.support.cli import cli, js
from tests.support.nbd_clients import need

pb, _ = stubs()
MiB = 1 << 20
BACKUP = {"type": "backup", "backupTarget": "nfs"}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Driver]]:
    need("nbdcopy")
    d = Path(f"/tmp/chcsibk-{os.getpid()}")
    cluster = LocalCluster.create(str(d), nodes=3, backend="sqlite").up(timeout=90)
    driver = None
    try:
        driver = Driver(d, d / "csi", "node-1")
        yield d, driver
    finally:
        if driver is not None:
            driver.close()
        cluster.down(purge=True)


def sha256_of(uri: str, tmp: Path) -> str:
    out = tmp / "read.img"
    out.unlink(missing_ok=True)
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_snapshot_as_backup_restore_and_delete(env: tuple[Path, Driver], tmp_path: Path) -> None:
    d, drv = env
    C = drv.ctl
    repo, key = tmp_path / "repo", tmp_path / "repo.key"
    cli(d, "backup-target", "add", "nfs", f"file://{repo}", "--generate-key", str(key))

    vol = C.CreateVolume(
        pb.CreateVolumeRequest(
            name="pvc-src",
            volume_capabilities=[block_cap()],
            capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
            parameters={"numberOfReplicas": "2"},
        ),
        timeout=120,
    ).volume
    uri = cli(d, "volume", "attach", vol.volume_id, "--node", "node-1").stdout.strip()
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(6 * MiB))
    p = subprocess.run(["nbdcopy", str(src), uri], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    want = sha256_of(uri, tmp_path)

    # bad class parameters: INVALID_ARGUMENT naming the parameter, nothing queued
    for params, says in (
        ({"type": "tape"}, "type='tape'"),
        ({"type": "backup"}, "backupTarget is required"),
        ({"type": "backup", "backupTarget": "nowhere"}, "backupTarget='nowhere'"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            C.CreateSnapshot(
                pb.CreateSnapshotRequest(
                    source_volume_id=vol.volume_id, name="bad", parameters=params
                ),
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        assert says in (e.value.details() or ""), e.value.details()
    assert js(d, "backup", "list") == []

    # the snapshotter's loop: CreateSnapshot again (same name) until ready_to_use
    req = pb.CreateSnapshotRequest(
        source_volume_id=vol.volume_id, name="snapshot-b1", parameters=BACKUP
    )
    t0 = time.monotonic()
    snap = C.CreateSnapshot(req, timeout=60).snapshot
    sid = snap.snapshot_id
    assert sid.startswith("backup:nfs:bk-"), sid
    calls = 1
    deadline = time.monotonic() + 300
    while not snap.ready_to_use:
        assert time.monotonic() < deadline, "the backup did not finish"
        time.sleep(0.5)
        snap = C.CreateSnapshot(req, timeout=60).snapshot
        calls += 1
        assert snap.snapshot_id == sid  # idempotent by name
    print(f"backup ready after {time.monotonic() - t0:.1f} s, {calls} CreateSnapshot calls")
    assert snap.size_bytes == 32 * MiB and snap.source_volume_id == vol.volume_id
    bid = sid.rsplit(":", 1)[1]
    [listed] = js(d, "backup", "list")  # type: ignore[misc]
    assert listed["id"] == bid and listed["state"] == "succeeded"
    got = C.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=sid), timeout=60)
    assert [e.snapshot.snapshot_id for e in got.entries] == [sid]

    # the restore: CreateVolume with the snapshot as content source
    src_ref = pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=sid)
    )
    too_small = pb.CreateVolumeRequest(
        name="pvc-small",
        volume_capabilities=[block_cap()],
        capacity_range=pb.CapacityRange(required_bytes=MiB, limit_bytes=16 * MiB),
        volume_content_source=src_ref,
    )
    with pytest.raises(grpc.RpcError) as e:
        C.CreateVolume(too_small, timeout=60)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE, e.value
    restore = pb.CreateVolumeRequest(
        name="pvc-restored",
        volume_capabilities=[block_cap()],
        capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
        volume_content_source=src_ref,
        parameters={"numberOfReplicas": "2"},
    )
    t0 = time.monotonic()
    new = None
    deadline = time.monotonic() + 300
    while new is None:  # DEADLINE_EXCEEDED while it restores: the CO retries
        try:
            new = C.CreateVolume(restore, timeout=120).volume
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            assert time.monotonic() < deadline, "the restore did not finish"
    print(f"restore done after {time.monotonic() - t0:.1f} s")
    assert new.content_source.snapshot.snapshot_id == sid
    assert new.capacity_bytes == 32 * MiB
    assert js(d, "volume", "get", "pvc-restored")["state"] == "detached"  # type: ignore[index]
    copy = cli(d, "volume", "attach", "pvc-restored", "--node", "node-2").stdout.strip()
    assert sha256_of(copy, tmp_path) == want
    cli(d, "volume", "detach", "pvc-restored")

    # DeleteSnapshot (deletionPolicy: Delete) removes the backup: record and catalog
    repository = Repository.open(FileTarget(repo, create=False), read_key(str(key)))
    assert [b.id for b in repository.backups()] == [listed["repository_id"]]
    C.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=sid), timeout=120)
    assert js(d, "backup", "list") == []
    assert repository.backups() == []
    C.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=sid), timeout=60)  # idempotent
    got = C.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=sid), timeout=60)
    assert not got.entries
