"""Group snapshots through a local cluster of real processes (manager, three agents, their
replica servers and engines, mutual TLS): the ``cargohold snapshot create-group`` CLI under
a live workload, every group restored (cloned) and read back, and the CSI GroupController
service of a ``cargohold csi --controller`` process over gRPC.

The workload (tests/support/group_workload.py, libnbd under Debian's Python) writes record
i to volume ``rec`` and, only once it was acknowledged, commit marker i to volume ``mark``.
A crash-consistent group shows no marker without its record; snapshots of the two taken one
after the other (not as a group) could.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cargohold.control.client import ManagerClient
from cargohold.csi import stubs
from cargohold.launcher.cluster import LocalCluster
from tests.support import group_workload
from tests.support.cli import cli
from tests.support.cluster_logs import failed, print_tails
from tests.support.nbd_clients import need
from tests.support.polling import wait_until

pb, pb_grpc = stubs()
MiB = 1 << 20
DEBIAN_PY = "/usr/bin/python3"
WORKLOAD = Path(group_workload.__file__)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    need("nbdcopy")
    if subprocess.run([DEBIAN_PY, "-c", "import nbd"], capture_output=True).returncode:
        pytest.skip("needs python3-libnbd under /usr/bin/python3")
    d = Path(f"/tmp/grp-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=3, backend="sqlite").up(timeout=90)
    try:
        yield d
    finally:
        if getattr(request.node, "group_failed", False):
            print_tails(d)
        c.down(purge=True)


@pytest.fixture
def client(cluster: Path, request: pytest.FixtureRequest) -> Iterator[ManagerClient]:
    with ManagerClient.discover(None, cluster) as c:
        yield c
    if failed(request):
        request.node.parent.group_failed = True  # the module's cluster prints its logs


def read_volume(c: ManagerClient, d: Path, name: str, out: Path) -> bytes:
    uri = cli(d, "volume", "attach", name, "--node", "node-2").stdout.strip()
    p = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cli(d, "volume", "detach", name)
    return out.read_bytes()


def restore(c: ManagerClient, vol: str, snap: str, size: int) -> str:
    """A new volume from ``vol``'s snapshot ``snap`` (what CreateVolume does from a snapshot)."""
    name = f"{vol}-{snap}"
    c.create_volume(name, size, replicas=1, source={"volume": vol, "snapshot": snap})
    wait_until(lambda: c.volume(name)["state"] == "detached", 120, f"clone {name}")
    return name


@pytest.mark.long  # about 3 minutes: six clones read back
def test_group_snapshots_under_load_are_crash_consistent(
    cluster: Path, client: ManagerClient, tmp_path: Path
) -> None:
    d, c = cluster, client
    size = 8 * MiB
    for v in ("rec", "mark"):
        cli(d, "volume", "create", v, "--size", "8MiB", "--replicas", "2")
    uri_rec = cli(d, "volume", "attach", "rec", "--node", "node-1").stdout.strip()
    uri_mark = cli(d, "volume", "attach", "mark", "--node", "node-1").stdout.strip()
    progress, stop = tmp_path / "progress", tmp_path / "stop"
    blocks = size // group_workload.BLOCK
    wl = subprocess.Popen(
        [DEBIAN_PY, str(WORKLOAD), uri_rec, uri_mark, str(blocks), str(progress), str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def written() -> int:
        try:
            return int(progress.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    took: dict[str, tuple[float, int, int]] = {}  # group -> (seconds, records before, after)
    try:
        for i in range(3):
            before = written()
            wait_until(lambda b=before: written() >= b + 64, 60, "the workload to write on")
            t, before = time.monotonic(), written()
            out = cli(d, "snapshot", "create-group", f"g{i}", "rec", "mark", "-o", "json")
            took[f"g{i}"] = (time.monotonic() - t, before, written())
            assert json.loads(out.stdout)["state"] == "ready", out.stdout
    finally:
        stop.touch()
        stdout, stderr = wl.communicate(timeout=60)
    assert wl.returncode == 0, stderr
    result = json.loads(stdout)
    print(f"workload: {result}; group snapshots (s, records before, after): {took}")
    listed = json.loads(cli(d, "snapshot", "list-groups", "-o", "json").stdout)
    assert sorted(g["name"] for g in listed) == ["g0", "g1", "g2"]
    assert all(g["state"] == "ready" and g["volumes"] == ["mark", "rec"] for g in listed)

    for g, (_, before, after) in took.items():
        a = read_volume(c, d, restore(c, "rec", g, size), tmp_path / "a.img")
        b = read_volume(c, d, restore(c, "mark", g, size), tmp_path / "b.img")
        records, markers = group_workload.check(a, b)
        # the picture is of a moment while the workload ran: what was acknowledged before
        # the command is there, and the records are a prefix (written in order)
        assert before - 1 <= len(markers) and len(records) <= after + 16, (g, before, after)
        assert records == set(range(len(records))), g
        assert markers == set(range(len(markers))), g
        assert len(records) - len(markers) <= 1, (g, len(records), len(markers))
    # the group's member snapshots go with it
    cli(d, "snapshot", "delete-group", "g0")
    wait_until(lambda: "g0" not in {g["name"] for g in c.group_snapshots()}, 60, "g0 deleted")
    assert "g0" not in {s["name"] for s in c.snapshots("rec")}
    assert "g0" not in {s["name"] for s in c.snapshots("mark")}
    assert {s["name"] for s in c.snapshots("rec")} >= {"g1", "g2"}


# --- the CSI GroupController over gRPC -----------------------------------------------------------


@pytest.fixture(scope="module")
def csi(cluster: Path) -> Iterator[object]:
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
            yield pb_grpc.GroupControllerStub(ch)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def code_of(fn, req) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        fn(req, timeout=90)
    return e.value.code()


def test_csi_group_controller(cluster: Path, client: ManagerClient, csi) -> None:  # type: ignore[no-untyped-def]
    d, c, g = cluster, client, csi
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
