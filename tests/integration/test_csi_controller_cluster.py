"""The CSI Controller-side services of a ``cargohold csi --controller`` process, over gRPC,
against a local cluster of real processes (manager, three agents, their replica servers and
engines, mutual TLS), one cluster for the module:

- the GroupController (volume group snapshots): success, idempotency by name, and the
  spec's error codes (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION);
- static provisioning: a volume made outside Kubernetes (the CLI), named by a
  PersistentVolume's volumeHandle, goes through the calls such a PV leads to (validate,
  publish with no volume context, snapshot, a volume from the snapshot and a clone of it,
  expand, unpublish), and the copies hold its data.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cargohold.control.client import ManagerClient
from cargohold.csi import stubs
from tests.support.cli import cli
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need, pattern_ok, qemu_io
from tests.support.polling import wait_until

pb, pb_grpc = stubs()
MiB = 1 << 20
AM = pb.VolumeCapability.AccessMode


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    need("qemu-io")
    with local_cluster("csictl", lambda: getattr(request.node, "csi_failed", False)) as d:
        yield d


@pytest.fixture
def client(cluster: Path, request: pytest.FixtureRequest) -> Iterator[ManagerClient]:
    with ManagerClient.discover(None, cluster) as c:
        yield c
    if failed(request):
        request.node.parent.csi_failed = True  # the module's cluster prints its logs


# --- the CSI GroupController over gRPC -----------------------------------------------------------


@pytest.fixture(scope="module")
def csi(cluster: Path) -> Iterator[grpc.Channel]:
    work = cluster / "csi-group"
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "csi.sock"
    log = open(work / "csi.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cargohold", "csi", "--endpoint", f"unix://{sock}",
         "--node-id", "node-1", "--controller", "--state-dir", str(work / "state"),
         "--dir", str(cluster), "--timeout", "60"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: sock.exists() or proc.poll() is not None, 30, "the csi driver")
        assert proc.poll() is None, (work / "csi.log").read_text()
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            yield ch
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def code_of(fn, req) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        fn(req, timeout=90)
    return e.value.code()


def test_csi_group_controller(cluster: Path, client: ManagerClient, csi) -> None:  # type: ignore[no-untyped-def]
    d, c, g = cluster, client, pb_grpc.GroupControllerStub(csi)
    caps = g.GroupControllerGetCapabilities(pb.GroupControllerGetCapabilitiesRequest(), timeout=10)
    want = pb.GroupControllerServiceCapability.RPC.Type.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
    assert [cap.rpc.type for cap in caps.capabilities] == [want]
    for v in ("pg-data", "pg-wal"):
        cli(d, "volume", "create", v, "--size", "8MiB", "--replicas", "2")
    cli(d, "volume", "attach", "pg-data", "--node", "node-1")  # one attached, one not
    name = "groupsnapshot-7c1e0a52-1f0e-4d4a-9c3e-2b5f9a1d0e11"
    req = pb.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=["pg-wal", "pg-data"])
    first = g.CreateVolumeGroupSnapshot(req, timeout=90).group_snapshot
    assert first.ready_to_use and first.group_snapshot_id
    members = {s.source_volume_id: s for s in first.snapshots}
    assert sorted(members) == ["pg-data", "pg-wal"]
    assert all(
        s.ready_to_use and s.group_snapshot_id == first.group_snapshot_id for s in members.values()
    )
    assert members["pg-data"].size_bytes == 8 * MiB
    # idempotent: the same request, the same answer
    again = g.CreateVolumeGroupSnapshot(req, timeout=90).group_snapshot
    assert again == first
    # the same name, other volumes: ALREADY_EXISTS
    other = pb.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=["pg-data"])
    assert code_of(g.CreateVolumeGroupSnapshot, other) == grpc.StatusCode.ALREADY_EXISTS
    # bad requests: INVALID_ARGUMENT; unknown volumes: NOT_FOUND
    for bad in (
        pb.CreateVolumeGroupSnapshotRequest(name="", source_volume_ids=["pg-data"]),
        pb.CreateVolumeGroupSnapshotRequest(name="x", source_volume_ids=[]),
        pb.CreateVolumeGroupSnapshotRequest(name="x", source_volume_ids=["pg-data", "pg-data"]),
    ):
        assert code_of(g.CreateVolumeGroupSnapshot, bad) == grpc.StatusCode.INVALID_ARGUMENT
    missing = pb.CreateVolumeGroupSnapshotRequest(name="y", source_volume_ids=["pg-data", "nope"])
    assert code_of(g.CreateVolumeGroupSnapshot, missing) == grpc.StatusCode.NOT_FOUND
    assert "y" not in {x["name"] for x in c.group_snapshots()}  # nothing was left of it
    # Get: the group; a wrong member list: FAILED_PRECONDITION; unknown: NOT_FOUND
    gid = first.group_snapshot_id
    ids = [s.snapshot_id for s in first.snapshots]
    got = g.GetVolumeGroupSnapshot(
        pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=ids), timeout=30
    ).group_snapshot
    assert got == first
    wrong = pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=ids[:1])
    assert code_of(g.GetVolumeGroupSnapshot, wrong) == grpc.StatusCode.FAILED_PRECONDITION
    for gone in ("no-such-group", "not/an/id"):
        r = pb.GetVolumeGroupSnapshotRequest(group_snapshot_id=gone)
        assert code_of(g.GetVolumeGroupSnapshot, r) == grpc.StatusCode.NOT_FOUND
    assert code_of(g.GetVolumeGroupSnapshot, pb.GetVolumeGroupSnapshotRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # a member restores like any snapshot (its id is VOLUME/NAME)
    vol, snap = members["pg-wal"].snapshot_id.split("/")
    assert (vol, snap) == ("pg-wal", gid)
    assert {s["name"]: s["state"] for s in c.snapshots("pg-wal")}[gid] == "ready"
    # Delete: a wrong member list refused; then deleted with its snapshots; again: OK
    assert (
        code_of(
            g.DeleteVolumeGroupSnapshot,
            pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=["pg-wal/zz"]),
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    delete = pb.DeleteVolumeGroupSnapshotRequest(group_snapshot_id=gid, snapshot_ids=ids)
    g.DeleteVolumeGroupSnapshot(delete, timeout=90)
    assert gid not in {s["name"] for s in c.snapshots("pg-wal") + c.snapshots("pg-data")}
    g.DeleteVolumeGroupSnapshot(delete, timeout=90)
    assert code_of(g.DeleteVolumeGroupSnapshot, pb.DeleteVolumeGroupSnapshotRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


# --- static provisioning: a PersistentVolume naming an existing cargohold volume --------------


def mount_cap(fs: str = "ext4") -> object:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs),
        access_mode=AM(mode=AM.SINGLE_NODE_WRITER),
    )


@pytest.mark.long  # about 40 s: two copies read back
def test_a_static_volume_takes_every_controller_call(
    cluster: Path, client: ManagerClient, csi
) -> None:  # type: ignore[no-untyped-def]
    """What deploy/examples/static-pv leads to: the PV's volumeHandle is the name of a volume
    made with the CLI; Kubernetes never called CreateVolume for it, so the calls come with an
    empty volume context."""
    d, c = cluster, client
    ctl = pb_grpc.ControllerStub(csi)
    cli(d, "volume", "create", "legacy-db", "--size", "16MiB", "--replicas", "2")
    cap = mount_cap()
    ok = ctl.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(volume_id="legacy-db", volume_capabilities=[cap]),
        timeout=30,
    )
    assert list(ok.confirmed.volume_capabilities) == [cap]
    got = ctl.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id="legacy-db"), timeout=30)
    assert got.volume.volume_id == "legacy-db" and got.volume.capacity_bytes == 16 * MiB
    # attach (the attacher's publish for the node the pod runs on): the node plugin stages
    # from the publish context alone (NodeStageVolume reads its endpoint)
    pub = ctl.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id="legacy-db", node_id="node-1", volume_capability=cap
        ),
        timeout=90,
    )
    endpoint = pub.publish_context["endpoint"]
    assert endpoint.startswith("nbd://"), dict(pub.publish_context)
    qemu_io(endpoint, "write -P 0x3c 1M 2M")
    # snapshot it, then a volume from the snapshot and a clone of the volume itself
    snap = ctl.CreateSnapshot(
        pb.CreateSnapshotRequest(source_volume_id="legacy-db", name="legacy-db-snap"), timeout=90
    ).snapshot
    assert snap.ready_to_use and snap.source_volume_id == "legacy-db"
    qemu_io(endpoint, "write -P 0x77 1M 1M")  # after the snapshot: not in it
    made = {}
    for name, source in (
        (
            "from-snap",
            pb.VolumeContentSource(
                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
            ),
        ),
        (
            "clone",
            pb.VolumeContentSource(
                volume=pb.VolumeContentSource.VolumeSource(volume_id="legacy-db")
            ),
        ),
    ):
        vol = ctl.CreateVolume(
            pb.CreateVolumeRequest(
                name=name,
                capacity_range=pb.CapacityRange(required_bytes=16 * MiB),
                volume_capabilities=[cap],
                parameters={"numberOfReplicas": "1"},
                volume_content_source=source,
            ),
            timeout=120,
        ).volume
        made[name] = vol.volume_id
        wait_until(
            lambda v=vol.volume_id: c.volume(v)["state"] == "detached", 120, f"{name} copied"
        )
    for name, first in (("from-snap", 0x3C), ("clone", 0x77)):
        uri = cli(d, "volume", "attach", made[name], "--node", "node-2").stdout.strip()
        assert pattern_ok(uri, 1 * MiB, 1 * MiB, first), name
        assert pattern_ok(uri, 2 * MiB, 1 * MiB, 0x3C), name
        cli(d, "volume", "detach", made[name])
    # expand it while published: the controller grows it, the node grows the filesystem
    grown = ctl.ControllerExpandVolume(
        pb.ControllerExpandVolumeRequest(
            volume_id="legacy-db",
            capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
            volume_capability=cap,
        ),
        timeout=90,
    )
    assert grown.capacity_bytes == 32 * MiB and grown.node_expansion_required
    assert c.volume("legacy-db")["size_bytes"] == 32 * MiB
    ctl.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id="legacy-db", node_id="node-1"), timeout=90
    )
    wait_until(lambda: c.volume("legacy-db")["state"] == "detached", 60, "legacy-db detached")
    # a PV naming a volume that does not exist: NOT_FOUND at publish (the pod's events say so)
    missing = pb.ControllerPublishVolumeRequest(
        volume_id="no-such", node_id="node-1", volume_capability=cap
    )
    with pytest.raises(grpc.RpcError) as e:
        ctl.ControllerPublishVolume(missing, timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


# --- changed-block metadata (CSI SnapshotMetadata) ---------------------------------------------


@pytest.mark.long  # about 30 s (test_engine_group_ops.py covers the engine's side by default)
def test_csi_snapshot_metadata(cluster: Path, client: ManagerClient, csi) -> None:  # type: ignore[no-untyped-def]
    d = cluster
    sm = pb_grpc.SnapshotMetadataStub(csi)
    cli(d, "volume", "create", "meta", "--size", "64MiB", "--replicas", "2")
    uri = cli(d, "volume", "attach", "meta", "--node", "node-1").stdout.strip()
    qemu_io(uri, "write -P 1 0 1M", "write -P 2 8M 64k", "write -P 3 40M 4k")
    cli(d, "snapshot", "create", "meta", "s1")
    qemu_io(uri, "write -P 4 512k 8k", "discard 8M 64k", "write -P 5 20M 12k")
    cli(d, "snapshot", "create", "meta", "s2")

    def runs(stream) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
        out = []
        for msg in stream:
            assert msg.block_metadata_type == pb.VARIABLE_LENGTH
            assert msg.volume_capacity_bytes == 64 * MiB
            out += [(b.byte_offset, b.size_bytes) for b in msg.block_metadata]
        return out

    alloc = pb.GetMetadataAllocatedRequest(snapshot_id="meta/s1")
    assert runs(sm.GetMetadataAllocated(alloc, timeout=60)) == [
        (0, MiB),
        (8 * MiB, 64 << 10),
        (40 * MiB, 4096),
    ]
    delta = pb.GetMetadataDeltaRequest(base_snapshot_id="meta/s1", target_snapshot_id="meta/s2")
    want = [(512 << 10, 8 << 10), (8 * MiB, 64 << 10), (20 * MiB, 12 << 10)]
    assert runs(sm.GetMetadataDelta(delta, timeout=60)) == want
    # paged: one range a message; from an offset on
    one = list(
        sm.GetMetadataDelta(
            pb.GetMetadataDeltaRequest(
                base_snapshot_id="meta/s1", target_snapshot_id="meta/s2", max_results=1
            ),
            timeout=60,
        )
    )
    assert [len(m.block_metadata) for m in one] == [1, 1, 1]
    later = pb.GetMetadataDeltaRequest(
        base_snapshot_id="meta/s1", target_snapshot_id="meta/s2", starting_offset=1 * MiB
    )
    assert runs(sm.GetMetadataDelta(later, timeout=60)) == want[1:]
    # the spec's errors
    for req, code in (
        (pb.GetMetadataAllocatedRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GetMetadataAllocatedRequest(snapshot_id="not-an-id"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GetMetadataAllocatedRequest(snapshot_id="meta/nope"), grpc.StatusCode.NOT_FOUND),
        (pb.GetMetadataAllocatedRequest(snapshot_id="gone/s1"), grpc.StatusCode.NOT_FOUND),
        (
            pb.GetMetadataAllocatedRequest(snapshot_id="meta/s1", starting_offset=64 * MiB),
            grpc.StatusCode.OUT_OF_RANGE,
        ),
        (
            pb.GetMetadataAllocatedRequest(snapshot_id="meta/s1", starting_offset=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        with pytest.raises(grpc.RpcError) as e:
            list(sm.GetMetadataAllocated(req, timeout=60))
        assert e.value.code() == code, (req, e.value.details())
    for req, code in (
        (
            pb.GetMetadataDeltaRequest(base_snapshot_id="meta/s2", target_snapshot_id="meta/s1"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            pb.GetMetadataDeltaRequest(base_snapshot_id="other/s1", target_snapshot_id="meta/s2"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.GetMetadataDeltaRequest(target_snapshot_id="meta/s2"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        with pytest.raises(grpc.RpcError) as e:
            list(sm.GetMetadataDelta(req, timeout=60))
        assert e.value.code() == code, (req, e.value.details())
