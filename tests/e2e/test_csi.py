"""The CSI driver driven as Kubernetes' sidecars and kubelet would, over gRPC on a unix
socket, against a local cluster of real processes (manager on SQLite, three agents, their
replica servers and engines), with real block devices (nbdfuse + loop), mkfs and mounts.

One cluster and one driver (controller + node services, standing in for node-1's plugin)
for the module; tests that need another node's plugin start a second driver with a state
directory of its own. The error-code tests run first (cheap), then the whole life of an
ext4 PVC, of an xfs PVC and of a raw block PVC (each expanded online while published and
written to), ReadOnlyMany readers on two nodes, a clone with a pod's fsGroup, a node that
dies with the volume staged, and Probe while the manager is down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cargohold.control.client import ManagerClient
from cargohold.csi import stubs
from cargohold.launcher.cluster import LocalCluster

pb, pb_grpc = stubs()
MiB = 1 << 20
AM = pb.VolumeCapability.AccessMode
pytestmark = pytest.mark.root


def mount_cap(mode: int = AM.SINGLE_NODE_WRITER, fs: str = "ext4") -> object:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs), access_mode=AM(mode=mode)
    )


def block_cap(mode: int = AM.SINGLE_NODE_WRITER) -> object:
    return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(), access_mode=AM(mode=mode))


def can_mount() -> str:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts)"
    for t in ("nbdfuse", "losetup", "mkfs.ext4", "fusermount3", "findmnt"):
        if not shutil.which(t):
            return f"needs {t}"
    if not os.path.exists("/dev/fuse") or not os.path.exists("/dev/loop-control"):
        return "needs /dev/fuse and /dev/loop-control"
    return ""


def has_cap_sys_resource() -> bool:
    """Online ext4 resize (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE (bit 24)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


class Driver:
    """A ``cargohold csi`` process and stubs for its three services."""

    def __init__(
        self,
        cluster_dir: Path,
        work: Path,
        node_id: str,
        controller: bool = True,
        node: bool = True,
        max_volumes: int = 32,
    ) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.sock = work / "csi.sock"
        self.state = work / "state"
        self.log = open(work / "csi.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "cargohold", "csi",
                "--endpoint", f"unix://{self.sock}",
                "--node-id", node_id, *(["--controller"] if controller else []),
                *(["--node"] if node else []),
                "--state-dir", str(self.state), "--dir", str(cluster_dir),
                "--timeout", "60", "--max-volumes", str(max_volumes),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            assert self.proc.poll() is None, (work / "csi.log").read_text()
            assert time.monotonic() < deadline, "the driver did not start"
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.identity = pb_grpc.IdentityStub(self.channel)
        self.ctl = pb_grpc.ControllerStub(self.channel)
        self.node = pb_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class SplitDriver:
    """The layout deploy/ ships: the controller (a Deployment) and the node plugin (a
    DaemonSet) as separate processes on separate sockets, each with its own state. The
    tests call ``ctl`` on the one and ``identity`` and ``node`` on the other, as the
    sidecars and kubelet do."""

    def __init__(self, cluster_dir: Path, work: Path, node_id: str) -> None:
        self.controller = Driver(cluster_dir, work / "controller", node_id, node=False)
        self.plugin = Driver(cluster_dir, work, node_id, controller=False)
        self.work, self.state = self.plugin.work, self.plugin.state
        self.identity, self.node = self.plugin.identity, self.plugin.node
        self.ctl = self.controller.ctl

    def close(self) -> None:
        self.plugin.close()
        self.controller.close()


def code_of(fn, req) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        fn(req, timeout=90)
    return e.value.code()


def loops() -> dict[str, str]:
    """Every bound loop device → its backing file."""
    out = subprocess.run(
        ["losetup", "-n", "-O", "NAME,BACK-FILE"], capture_output=True, text=True
    ).stdout
    return {p[0]: p[1] for p in (ln.split(None, 1) for ln in out.splitlines()) if len(p) == 2}


def leftovers(state: Path) -> list[str]:
    """nbdfuse processes (each holds a FUSE mount), mounts and loop devices of ours."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    out = [ln for ln in ps.splitlines() if ln.startswith("nbdfuse") and str(state) in ln]
    mounts = Path("/proc/self/mounts").read_text()
    out += [ln for ln in mounts.splitlines() if str(state.parent) in ln]
    out += [f"{d} over {f}" for d, f in loops().items() if str(state.parent) in f]
    return out


def engines(vid: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if " engine " in ln and f"--volume {vid} " in ln]


def no_engine(vid: str, timeout: float = 30) -> None:
    """The volume's engine process is gone (the agent stops it after a detach)."""
    deadline = time.monotonic() + timeout
    while engines(vid):
        assert time.monotonic() < deadline, engines(vid)
        time.sleep(0.2)


def record(drv: Driver, vid: str) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads((drv.state / f"{vid}.json").read_text())


def size_of(path: str) -> int:
    return int(subprocess.run(["blockdev", "--getsize64", path], capture_output=True,
                              text=True, check=True).stdout)  # fmt: skip


def mmap_block() -> object:
    """4 KiB of page-aligned memory (O_DIRECT writes)."""
    import mmap

    m = mmap.mmap(-1, 4096)
    m.write(b"x" * 4096)
    return m


def fs_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


class Writer(threading.Thread):
    """Writes and fsyncs files under ``root`` until stopped: I/O during an expansion."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.root = Path(root, "during")
        self.root.mkdir(exist_ok=True)
        self.files: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                data = os.urandom(128 * 1024)
                with open(self.root / f"w{i}", "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self.files[f"w{i}"] = data
                i += 1
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        assert self.error is None, self.error
        assert len(self.files) >= 2, "the writer did not write during the expansion"
        for name, data in self.files.items():
            assert (self.root / name).read_bytes() == data, name


@pytest.fixture(
    scope="module",
    params=["combined", pytest.param("split", marks=pytest.mark.long)],
)
def env(request: pytest.FixtureRequest) -> Iterator[tuple[LocalCluster, Driver, Path]]:
    """A cluster and node-1's driver: one process serving the controller and the node
    service ("combined", what `cargohold up` users run), or the two as separate processes
    on separate sockets ("split", what deploy/ ships; `make test-long` runs every test of
    the module in it, test_split_layout_stages_with_the_controllers_publish_context in
    `make test`)."""
    why = can_mount()
    if why:
        pytest.skip(why)
    d = Path(f"/tmp/chcsi-{os.getpid()}-{request.param}")
    work = d / "csi"
    cluster = LocalCluster.create(str(d), nodes=3).up(timeout=90)
    driver: Driver | SplitDriver | None = None
    try:
        work.mkdir(parents=True)
        driver = (
            Driver(d, work, "node-1")
            if request.param == "combined"
            else SplitDriver(d, work, "node-1")
        )
        yield cluster, driver, work  # type: ignore[misc]
    finally:
        # tear down whatever a failed test left staged, then the cluster
        if driver is not None:
            driver.close()
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(d)):
                subprocess.run(["umount", "-l", mnt], check=False)
        ours = {dev for dev, back in loops().items() if str(d) in back}
        over = [dev for dev, back in loops().items() if back in ours]  # read-only publishes
        for dev in [*over, *sorted(ours)]:
            subprocess.run(["losetup", "-d", dev], check=False)
        cluster.down(purge=True)


@pytest.fixture
def other_node(env) -> Iterator:  # type: ignore[no-untyped-def,type-arg]
    """A second node plugin (a driver process with its own state) for a node given later."""
    cluster, _, work = env
    made: list[Driver] = []

    def start(node_id: str) -> Driver:
        drv = Driver(Path(cluster.dir), work.parent / f"csi-{node_id}", node_id, controller=False)
        made.append(drv)
        return drv

    yield start
    for drv in made:
        drv.close()


# --- identity and error codes ----------------------------------------------------------


def test_identity_and_capabilities(env) -> None:  # type: ignore[no-untyped-def]
    _, drv, _ = env
    info = drv.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "csi.cargohold.io" and info.vendor_version
    assert drv.identity.Probe(pb.ProbeRequest()).ready.value is True
    caps = drv.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    svc = {c.service.type for c in caps if c.HasField("service")}
    assert svc == {
        pb.PluginCapability.Service.CONTROLLER_SERVICE,
        pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS,
        pb.PluginCapability.Service.GROUP_CONTROLLER_SERVICE,
        pb.PluginCapability.Service.SNAPSHOT_METADATA_SERVICE,
    }
    assert any(c.volume_expansion.type == 1 for c in caps if c.HasField("volume_expansion"))
    ncaps = {
        c.rpc.type
        for c in drv.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities
    }
    R = pb.NodeServiceCapability.RPC
    assert {
        R.STAGE_UNSTAGE_VOLUME,
        R.EXPAND_VOLUME,
        R.GET_VOLUME_STATS,
        R.VOLUME_CONDITION,
        R.VOLUME_MOUNT_GROUP,
    } <= ncaps
    C = pb.ControllerServiceCapability.RPC
    ccaps = {
        c.rpc.type
        for c in drv.ctl.ControllerGetCapabilities(
            pb.ControllerGetCapabilitiesRequest()
        ).capabilities
    }
    assert ccaps == {
        C.CREATE_DELETE_VOLUME, C.PUBLISH_UNPUBLISH_VOLUME, C.LIST_VOLUMES, C.GET_CAPACITY,
        C.CREATE_DELETE_SNAPSHOT, C.LIST_SNAPSHOTS, C.CLONE_VOLUME, C.PUBLISH_READONLY,
        C.EXPAND_VOLUME, C.LIST_VOLUMES_PUBLISHED_NODES, C.VOLUME_CONDITION, C.GET_VOLUME,
        C.SINGLE_NODE_MULTI_WRITER, C.MODIFY_VOLUME,
    }  # fmt: skip
    info = drv.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == "node-1" and info.max_volumes_per_node == 32
    assert dict(info.accessible_topology.segments) == {
        "topology.cargohold.io/node": "node-1",
        "topology.cargohold.io/zone": "default",
    }


def test_create_volume_idempotency_and_errors(env) -> None:  # type: ignore[no-untyped-def]
    cluster, drv, _ = env
    C = drv.ctl
    req = pb.CreateVolumeRequest(
        name="pvc-Idem_1",
        capacity_range=pb.CapacityRange(required_bytes=10 * MiB + 1),
        volume_capabilities=[mount_cap()],
        parameters={"numberOfReplicas": "2", "csi.storage.k8s.io/pvc/name": "x"},
    )
    v1 = C.CreateVolume(req).volume
    assert v1.volume_id.startswith("pvc-idem-1-") and len(v1.volume_id) <= 63
    assert v1.capacity_bytes == 10 * MiB + 4096
    assert C.CreateVolume(req).volume.volume_id == v1.volume_id  # same name: same volume
    other = pb.CreateVolumeRequest()
    other.CopyFrom(req)
    other.parameters["numberOfReplicas"] = "3"
    assert code_of(C.CreateVolume, other) == grpc.StatusCode.ALREADY_EXISTS
    bad = pb.CreateVolumeRequest(name="x", volume_capabilities=[mount_cap()])
    for params, word in (
        ({"numberOfReplicas": "0"}, "numberOfReplicas"),
        ({"fsType": "btrfs"}, "fsType"),
        ({"zoneSpread": "maybe"}, "zoneSpread"),
        ({"staleReplicaTimeout": "8d"}, "staleReplicaTimeout"),
        ({"replicaCount": "2"}, "replicaCount"),
        ({"diskSelector": "ssd,fast disk"}, "diskSelector"),
        ({"nodeSelector": "-edge"}, "nodeSelector"),
    ):
        bad.parameters.clear()
        bad.parameters.update(params)
        with pytest.raises(grpc.RpcError) as e:
            C.CreateVolume(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and word in e.value.details()
    for mode in (AM.MULTI_NODE_MULTI_WRITER, AM.MULTI_NODE_SINGLE_WRITER):
        r = pb.CreateVolumeRequest(name="mm", volume_capabilities=[mount_cap(mode)])
        with pytest.raises(grpc.RpcError) as e:
            C.CreateVolume(r)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one writer" in e.value.details()
    assert (
        code_of(C.CreateVolume, pb.CreateVolumeRequest(name="nocaps"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    r = pb.CreateVolumeRequest(
        name="range", volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(required_bytes=10 * MiB, limit_bytes=MiB),
    )  # fmt: skip
    assert code_of(C.CreateVolume, r) == grpc.StatusCode.OUT_OF_RANGE
    r = pb.CreateVolumeRequest(
        name="toomany", volume_capabilities=[mount_cap()], parameters={"numberOfReplicas": "5"}
    )
    assert code_of(C.CreateVolume, r) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for sel in ({"nodeSelector": "gpu"}, {"diskSelector": "nvme"}):  # no node or disk has it
        r = pb.CreateVolumeRequest(name="untagged", volume_capabilities=[mount_cap()],
                                   parameters={"numberOfReplicas": "1", **sel})  # fmt: skip
        with pytest.raises(grpc.RpcError) as e:
            C.CreateVolume(r)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    r = pb.CreateVolumeRequest(
        name="nowhere", volume_capabilities=[mount_cap()],
        accessibility_requirements=pb.TopologyRequirement(
            requisite=[pb.Topology(segments={"topology.cargohold.io/node": "node-9"})]
        ),
    )  # fmt: skip
    assert code_of(C.CreateVolume, r) == grpc.StatusCode.RESOURCE_EXHAUSTED
    r = pb.CreateVolumeRequest(
        name="topo", volume_capabilities=[mount_cap()],
        capacity_range=pb.CapacityRange(required_bytes=MiB),
        parameters={"numberOfReplicas": "1"},
        accessibility_requirements=pb.TopologyRequirement(
            requisite=[pb.Topology(segments={"topology.cargohold.io/node": n}) for n in ("node-2", "node-9")],
            preferred=[pb.Topology(segments={"topology.cargohold.io/node": "node-2"})],
        ),
    )  # fmt: skip
    created = C.CreateVolume(r).volume
    topo = created.accessible_topology
    assert [dict(t.segments) for t in topo] == [{"topology.cargohold.io/node": "node-2"}]
    with ManagerClient(cluster.api) as api:  # the replica went where the pod will run
        assert [x["node"] for x in api.volume(created.volume_id)["replicas"]] == ["node-2"]

    # other RPCs' codes
    missing = "pvc-nope"
    assert (
        code_of(C.ControllerGetVolume, pb.ControllerGetVolumeRequest(volume_id=missing))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(
            C.ControllerPublishVolume,
            pb.ControllerPublishVolumeRequest(
                volume_id=missing, node_id="node-1", volume_capability=mount_cap()
            ),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(
            C.ControllerPublishVolume,
            pb.ControllerPublishVolumeRequest(
                volume_id=v1.volume_id, node_id="node-9", volume_capability=mount_cap()
            ),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(
            C.ControllerPublishVolume,
            pb.ControllerPublishVolumeRequest(volume_id=v1.volume_id, node_id="node-1"),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(
            C.ValidateVolumeCapabilities,
            pb.ValidateVolumeCapabilitiesRequest(
                volume_id=missing, volume_capabilities=[mount_cap()]
            ),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(
            C.ControllerExpandVolume,
            pb.ControllerExpandVolumeRequest(
                volume_id=missing, capacity_range=pb.CapacityRange(required_bytes=MiB)
            ),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(C.CreateSnapshot, pb.CreateSnapshotRequest(source_volume_id=missing, name="s"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(C.ListVolumes, pb.ListVolumesRequest(starting_token="zz"))
        == grpc.StatusCode.ABORTED
    )
    assert (
        code_of(C.ListSnapshots, pb.ListSnapshotsRequest(starting_token="999"))
        == grpc.StatusCode.ABORTED
    )
    assert (
        code_of(
            drv.node.NodePublishVolume,
            pb.NodePublishVolumeRequest(
                volume_id=v1.volume_id,
                target_path="/tmp/x",
                staging_target_path="/tmp/y",
                volume_capability=mount_cap(),
            ),
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(
            drv.node.NodeStageVolume,
            pb.NodeStageVolumeRequest(
                volume_id=v1.volume_id, staging_target_path="/tmp/y", volume_capability=mount_cap()
            ),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(
            drv.node.NodeGetVolumeStats,
            pb.NodeGetVolumeStatsRequest(volume_id=v1.volume_id, volume_path="/tmp/none"),
        )
        == grpc.StatusCode.NOT_FOUND
    )
    ok = C.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=v1.volume_id, volume_capabilities=[mount_cap()]
        )
    )
    assert ok.HasField("confirmed")
    no = C.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=v1.volume_id, volume_capabilities=[mount_cap(AM.MULTI_NODE_MULTI_WRITER)]
        )
    )
    assert not no.HasField("confirmed") and "MULTI_NODE_MULTI_WRITER" in no.message

    # pagination
    names = []
    token = ""
    while True:
        page = C.ListVolumes(pb.ListVolumesRequest(max_entries=1, starting_token=token))
        names += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert v1.volume_id in names and len(names) == len(set(names)) >= 2

    # capacity: the same for every segment with an up node (volumes are reachable from
    # every node), 0 for a segment without one; N replicas need N placements
    def capacity(replicas: str, **seg: str) -> tuple[int, int]:
        topo = {f"topology.cargohold.io/{k}": v for k, v in seg.items()}
        got = C.GetCapacity(pb.GetCapacityRequest(
            parameters={"numberOfReplicas": replicas},
            accessible_topology=pb.Topology(segments=topo) if topo else None))  # fmt: skip
        return got.available_capacity, got.maximum_volume_size.value

    one, three = capacity("1"), capacity("3")
    assert capacity("3", node="node-1") == three == capacity("3", zone="default")
    assert capacity("3", node="node-9") == (0, 0) == capacity("4")
    assert three[0] > 0 and three[1] > 0
    with ManagerClient(cluster.api) as api:
        disks = api.disks()
    raw = sum(int(dk["capacity_bytes"]) for dk in disks)
    assert one[0] <= raw and three[0] <= raw // 3 and one[0] > 2.5 * three[0]
    assert one[1] >= three[1]
    got = C.GetCapacity(pb.GetCapacityRequest(parameters={"nodeSelector": "gpu"}))
    assert got.available_capacity == 0
    assert (
        code_of(C.GetCapacity, pb.GetCapacityRequest(parameters={"numberOfReplicas": "x"}))
        == grpc.StatusCode.INVALID_ARGUMENT
    )

    # deletes are idempotent
    for vid in (v1.volume_id, C.CreateVolume(r).volume.volume_id):
        C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
        C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    C.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id="pvc-nope/snap"))
    C.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id=missing, node_id="node-1")
    )


# --- a PVC's life ----------------------------------------------------------------------


def stage_and_publish(
    drv: Driver, work: Path, vid: str, cap, node: str = "node-1", ro: bool = False, ctl=None
) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """ControllerPublish through ``ctl`` (the one controller; default ``drv``'s), then
    NodeStage and NodePublish on ``drv``'s node plugin, each twice (idempotent)."""
    ctl = ctl or drv.ctl
    pub = ctl.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=node, volume_capability=cap, readonly=ro
        )
    )
    assert pub.publish_context["endpoint"].startswith("nbd://")
    again = ctl.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=node, volume_capability=cap, readonly=ro
        )
    )
    assert again.publish_context["endpoint"] == pub.publish_context["endpoint"]
    staging = str(work / "staging" / vid)
    target = str(work / "pods" / vid / ("dev" if cap.HasField("block") else "mount"))
    for _ in range(2):  # idempotent
        drv.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap,
            publish_context=pub.publish_context))  # fmt: skip
    for _ in range(2):
        drv.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target,
            volume_capability=cap, readonly=ro, publish_context=pub.publish_context))  # fmt: skip
    return staging, target


def unpublish_and_unstage(
    drv: Driver, vid: str, staging: str, target: str, node: str = "node-1", ctl=None
) -> None:  # type: ignore[no-untyped-def]
    ctl = ctl or drv.ctl
    for _ in range(2):
        drv.node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target)
        )
    for _ in range(2):
        drv.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging)
        )
    for _ in range(2):
        ctl.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node)
        )


def write_files(root: str, n: int = 5) -> dict[str, bytes]:
    files = {f"f{i}.bin": os.urandom(64 * 1024 + i) for i in range(n)}
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    return files


def test_filesystem_pvc_life(env) -> None:  # type: ignore[no-untyped-def]
    _, drv, work = env
    C, N = drv.ctl, drv.node
    cap = mount_cap()
    vol = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-life", capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "2", "fsType": "ext4"},
    )).volume  # fmt: skip
    vid = vol.volume_id
    assert vol.volume_context["fsType"] == "ext4"
    staging, target = stage_and_publish(drv, work, vid, cap)
    files = write_files(target)
    # a second node cannot take the volume while it is published here
    assert code_of(C.ControllerPublishVolume, pb.ControllerPublishVolumeRequest(
        volume_id=vid, node_id="node-2", volume_capability=cap)) == grpc.StatusCode.FAILED_PRECONDITION  # fmt: skip
    assert (
        code_of(C.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vid))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    got = C.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid))
    assert list(got.status.published_node_ids) == ["node-1"]

    # snapshot, then a volume from it, mounted read-only: the same files
    snap = C.CreateSnapshot(
        pb.CreateSnapshotRequest(source_volume_id=vid, name="snapshot-1")
    ).snapshot
    assert snap.snapshot_id == f"{vid}/snapshot-1" and snap.ready_to_use
    assert (
        C.CreateSnapshot(
            pb.CreateSnapshotRequest(source_volume_id=vid, name="snapshot-1")
        ).snapshot.snapshot_id
        == snap.snapshot_id
    )
    listed = C.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=vid)).entries
    assert [e.snapshot.snapshot_id for e in listed] == [snap.snapshot_id]
    assert [
        e.snapshot.snapshot_id
        for e in C.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=snap.snapshot_id)).entries
    ] == [snap.snapshot_id]
    with open(os.path.join(target, "after-snapshot"), "w") as f:
        f.write("not in the snapshot")
    src = pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)
    )
    clone = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-restore", volume_capabilities=[cap], volume_content_source=src,
        capacity_range=pb.CapacityRange(required_bytes=64 * MiB), parameters={"numberOfReplicas": "1"},
    )).volume  # fmt: skip
    assert clone.content_source.snapshot.snapshot_id == snap.snapshot_id
    cstaging, ctarget = stage_and_publish(drv, work, clone.volume_id, cap, ro=True)
    for name, data in files.items():
        assert Path(ctarget, name).read_bytes() == data
    assert not Path(ctarget, "after-snapshot").exists()
    with pytest.raises(OSError):
        Path(ctarget, "x").write_text("read-only")
    # the snapshot's name is taken by the source volume: not a snapshot of the clone
    assert code_of(C.CreateSnapshot, pb.CreateSnapshotRequest(
        source_volume_id=clone.volume_id, name="snapshot-1")) == grpc.StatusCode.ALREADY_EXISTS  # fmt: skip
    unpublish_and_unstage(drv, clone.volume_id, cstaging, ctarget)
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=clone.volume_id))

    # expansion as the resizer and kubelet do it: while published and written to, with
    # volume_path = the publish path; the device grows in place, then the filesystem
    before = fs_bytes(target)
    exp = C.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=128 * MiB), volume_capability=cap))  # fmt: skip
    assert exp.capacity_bytes == 128 * MiB and exp.node_expansion_required
    again = C.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=128 * MiB), volume_capability=cap))  # fmt: skip
    assert again.capacity_bytes == 128 * MiB  # a repeat is idempotent
    smaller = C.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=64 * MiB)))  # fmt: skip
    assert smaller.capacity_bytes == 128 * MiB  # already at least that large
    shrink = pb.ControllerExpandVolumeRequest(volume_id=vid, capacity_range=pb.CapacityRange(
        required_bytes=64 * MiB, limit_bytes=64 * MiB))  # fmt: skip
    assert code_of(C.ControllerExpandVolume, shrink) == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(C.ControllerExpandVolume, shrink) == grpc.StatusCode.OUT_OF_RANGE
    req = pb.NodeExpandVolumeRequest(volume_id=vid, volume_path=target, staging_target_path=staging,
                                     capacity_range=pb.CapacityRange(required_bytes=128 * MiB), volume_capability=cap)  # fmt: skip
    writer = Writer(target)
    writer.start()
    time.sleep(0.5)
    device = record(drv, vid)["device"]
    if has_cap_sys_resource():
        assert N.NodeExpandVolume(req).capacity_bytes == 128 * MiB
        assert fs_bytes(target) > before + 50 * MiB, (before, fs_bytes(target))
        assert N.NodeExpandVolume(req).capacity_bytes == 128 * MiB  # a repeat: nothing to do
    else:
        # this sandbox drops CAP_SYS_RESOURCE, which the kernel wants for online ext4
        # resizes: the device still grows in place and the answer says what is missing
        with pytest.raises(grpc.RpcError) as e:
            N.NodeExpandVolume(req)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CAP_SYS_RESOURCE" in e.value.details(), e.value.details()
    time.sleep(0.5)
    writer.finish()
    assert size_of(device) == 128 * MiB  # the same loop device, grown while mounted
    # staged again (the pod restarted): the filesystem is grown, the data is there
    unpublish_and_unstage(drv, vid, staging, target)
    staging, target = stage_and_publish(drv, work, vid, cap)
    after = fs_bytes(target)
    assert after > before + 50 * MiB, (before, after)
    for name, data in files.items():
        assert Path(target, name).read_bytes() == data
    for name, data in writer.files.items():
        assert Path(target, "during", name).read_bytes() == data

    stats = N.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
    units = {u.unit: u for u in stats.usage}
    assert (
        units[pb.VolumeUsage.BYTES].total == after
        and units[pb.VolumeUsage.BYTES].used > 5 * 64 * 1024
    )
    assert units[pb.VolumeUsage.INODES].used > 5
    assert not stats.volume_condition.abnormal, stats.volume_condition.message

    unpublish_and_unstage(drv, vid, staging, target)
    C.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    C.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert (
        code_of(C.ControllerGetVolume, pb.ControllerGetVolumeRequest(volume_id=vid))
        == grpc.StatusCode.NOT_FOUND
    )
    assert leftovers(work / "state") == []


def test_xfs_pvc_life(env) -> None:  # type: ignore[no-untyped-def]
    """xfs: staged (mkfs.xfs on first use), written, grown online while published and
    written to (xfs_growfs needs no more than CAP_SYS_ADMIN), stats, clean teardown."""
    _, drv, work = env
    C, N = drv.ctl, drv.node
    cap = mount_cap(fs="xfs")
    vid = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-xfs", capacity_range=pb.CapacityRange(required_bytes=320 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "1", "fsType": "xfs"},
    )).volume.volume_id  # fmt: skip
    staging, target = stage_and_publish(drv, work, vid, cap)
    assert subprocess.run(["findmnt", "-n", "-o", "FSTYPE", target], capture_output=True,
                          text=True).stdout.split() == ["xfs"]  # fmt: skip
    files = write_files(target)
    before = fs_bytes(target)
    C.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=640 * MiB), volume_capability=cap))  # fmt: skip
    writer = Writer(target)
    writer.start()
    time.sleep(0.5)
    got = N.NodeExpandVolume(pb.NodeExpandVolumeRequest(
        volume_id=vid, volume_path=target, capacity_range=pb.CapacityRange(required_bytes=640 * MiB),
        volume_capability=cap))  # fmt: skip
    time.sleep(0.5)
    writer.finish()
    assert got.capacity_bytes == 640 * MiB
    after = fs_bytes(target)
    assert after > before + 250 * MiB, (before, after)
    for name, data in files.items():
        assert Path(target, name).read_bytes() == data
    stats = N.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
    units = {u.unit: u for u in stats.usage}
    assert units[pb.VolumeUsage.BYTES].total == after
    assert units[pb.VolumeUsage.BYTES].used > 5 * 64 * 1024
    assert units[pb.VolumeUsage.INODES].used > 5
    unpublish_and_unstage(drv, vid, staging, target)
    no_engine(vid)
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert leftovers(work / "state") == []


def test_xfs_clone_and_restore_mount_beside_their_source(env) -> None:  # type: ignore[no-untyped-def]
    """A clone and a restored snapshot of an xfs volume carry its filesystem UUID; staged
    on the node where the source is mounted they mount too (nouuid) and hold its files.
    A 64 MiB xfs request is rounded up to mkfs.xfs's 300 MiB minimum; with a limit below
    that it is OUT_OF_RANGE at CreateVolume, not a PVC that never stages."""
    _, drv, work = env
    C = drv.ctl
    cap = mount_cap(fs="xfs")
    small = pb.CreateVolumeRequest(
        name="pvc-xfs-small", capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "1"},
    )  # fmt: skip
    src = C.CreateVolume(small).volume
    assert src.capacity_bytes == 300 * MiB and src.volume_context["fsType"] == "xfs"
    assert C.CreateVolume(small).volume.volume_id == src.volume_id  # a repeat: the same
    limited = pb.CreateVolumeRequest()
    limited.CopyFrom(small)
    limited.name = "pvc-xfs-limited"
    limited.capacity_range.limit_bytes = 128 * MiB
    with pytest.raises(grpc.RpcError) as e:
        C.CreateVolume(limited)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE and "300 MiB" in e.value.details()

    vid = src.volume_id
    staging, target = stage_and_publish(drv, work, vid, cap)
    opts = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", staging], capture_output=True,
                          text=True).stdout.strip().split(",")  # fmt: skip
    assert "nouuid" in opts, opts
    files = write_files(target)
    subprocess.run(["sync", "-f", target], check=True)
    snap = C.CreateSnapshot(pb.CreateSnapshotRequest(source_volume_id=vid, name="xfs-1")).snapshot
    made = []
    for name, source in (
        ("pvc-xfs-restore", pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))),
        ("pvc-xfs-clone", pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=vid))),
    ):  # fmt: skip
        v = C.CreateVolume(pb.CreateVolumeRequest(
            name=name, capacity_range=pb.CapacityRange(required_bytes=300 * MiB),
            volume_capabilities=[cap], volume_content_source=source,
            parameters={"numberOfReplicas": "1"},
        )).volume.volume_id  # fmt: skip
        made.append(v)
    uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", record(drv, vid)["device"]],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    staged = []
    for v in made:  # both at once, beside the mounted source, on the same node
        s, t = stage_and_publish(drv, work, v, cap)
        staged.append((v, s, t))
        dev = record(drv, v)["device"]
        same = subprocess.run(["blkid", "-o", "value", "-s", "UUID", dev], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        assert uuid and same == uuid  # the source's UUID, mounted anyway
        for name, data in files.items():
            assert Path(t, name).read_bytes() == data, (v, name)
        Path(t, "own").write_text(v)  # and writable
    for v, s, t in staged:
        assert Path(t, "own").read_text() == v
        unpublish_and_unstage(drv, v, s, t)
        C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v))
    unpublish_and_unstage(drv, vid, staging, target)
    C.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert leftovers(work / "state") == []


def test_split_layout_stages_with_the_controllers_publish_context(env) -> None:  # type: ignore[no-untyped-def]
    """The layout deploy/ ships, for node-2: a controller-only and a node-only process on
    separate sockets. Both answer the same GetPluginCapabilities (CONTROLLER_SERVICE
    included); the node plugin stages with the publish context the controller returned.
    The controller enforces the attach limit (--max-volumes 2 here): the third volume on
    node-2 is RESOURCE_EXHAUSTED naming the limit, counting what the manager has attached
    there; another node takes it; freeing a place lets it in."""
    cluster, _, work = env
    d = Path(cluster.dir)
    ctl_drv = Driver(d, work.parent / "split-controller", "node-2", node=False, max_volumes=2)
    plug = Driver(d, work.parent / "split-node-2", "node-2", controller=False, max_volumes=2)
    try:
        caps = [
            drv.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
            for drv in (ctl_drv, plug)
        ]
        assert caps[0] == caps[1]
        svc = {c.service.type for c in caps[1] if c.HasField("service")}
        assert pb.PluginCapability.Service.CONTROLLER_SERVICE in svc
        assert plug.node.NodeGetInfo(pb.NodeGetInfoRequest()).max_volumes_per_node == 2
        C = ctl_drv.ctl
        cap = mount_cap()
        vids = [
            C.CreateVolume(pb.CreateVolumeRequest(
                name=f"pvc-split-{i}", capacity_range=pb.CapacityRange(required_bytes=16 * MiB),
                volume_capabilities=[cap], parameters={"numberOfReplicas": "1"},
            )).volume.volume_id
            for i in range(3)
        ]  # fmt: skip
        staging, target = stage_and_publish(plug, plug.work, vids[0], cap, node="node-2", ctl=C)
        files = write_files(target, 3)
        unpublish_and_unstage(plug, vids[0], staging, target, node="node-2", ctl=C)
        staging, target = stage_and_publish(plug, plug.work, vids[0], cap, node="node-2", ctl=C)
        for name, data in files.items():
            assert Path(target, name).read_bytes() == data

        def publish(vid: str, node: str) -> object:
            return C.ControllerPublishVolume(pb.ControllerPublishVolumeRequest(
                volume_id=vid, node_id=node, volume_capability=cap))  # fmt: skip

        publish(vids[1], "node-2")
        full = pb.ControllerPublishVolumeRequest(volume_id=vids[2], node_id="node-2",
                                                 volume_capability=cap)  # fmt: skip
        with pytest.raises(grpc.RpcError) as e:
            C.ControllerPublishVolume(full, timeout=90)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_volumes_per_node" in e.value.details() and "is 2" in e.value.details()
        assert engines(vids[2]) == []  # nothing was attached for it
        publish(vids[1], "node-2")  # a repeat is no volume more
        publish(vids[2], "node-3")
        C.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vids[2], node_id="node-3")
        )
        C.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vids[1], node_id="node-2")
        )
        publish(vids[2], "node-2")  # a place is free again
        C.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vids[2], node_id="node-2")
        )
        unpublish_and_unstage(plug, vids[0], staging, target, node="node-2", ctl=C)
        for vid in vids:
            no_engine(vid)
            C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
        assert leftovers(plug.state) == []
    finally:
        plug.close()
        ctl_drv.close()


def test_raw_block_pvc_life(env) -> None:  # type: ignore[no-untyped-def]
    _, drv, work = env
    C, N = drv.ctl, drv.node
    cap = block_cap(AM.SINGLE_NODE_MULTI_WRITER)
    vid = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-block", capacity_range=pb.CapacityRange(required_bytes=16 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "2"},
    )).volume.volume_id  # fmt: skip
    staging, target = stage_and_publish(drv, work, vid, cap)
    data = os.urandom(MiB)
    fd = os.open(target, os.O_RDWR)
    try:
        os.pwrite(fd, data, 4 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    stats = N.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target))
    assert stats.usage[0].total == 16 * MiB
    # staging it as a filesystem now is a conflict
    assert code_of(N.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging, target_path=str(work / "other"),
        volume_capability=mount_cap())) == grpc.StatusCode.ALREADY_EXISTS  # fmt: skip

    # a read-only publish is a device that refuses writes (not merely a read-only bind)
    ro_target = str(work / "pods" / vid / "ro-dev")
    for _ in range(2):
        N.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=ro_target,
            volume_capability=cap, readonly=True))  # fmt: skip
    ro_loop = record(drv, vid)["ro_loops"][ro_target]
    assert loops()[ro_loop] == record(drv, vid)["device"]
    with open(ro_target, "rb") as f:
        f.seek(4 * MiB)
        assert f.read(MiB) == data
    with pytest.raises(OSError):
        fd = os.open(ro_target, os.O_WRONLY)
        try:
            os.pwrite(fd, b"x" * 4096, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    with pytest.raises(OSError):  # nor through the device itself
        fd = os.open(ro_loop, os.O_WRONLY | os.O_DIRECT)
        try:
            os.pwrite(fd, memoryview(mmap_block()), 0)
        finally:
            os.close(fd)
    assert subprocess.run(["blockdev", "--getro", ro_loop], capture_output=True,
                          text=True).stdout.strip() == "1"  # fmt: skip

    # online expansion of the published device: both publishes see the new size
    C.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=32 * MiB), volume_capability=cap))  # fmt: skip
    got = N.NodeExpandVolume(pb.NodeExpandVolumeRequest(
        volume_id=vid, volume_path=target, capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
        volume_capability=cap))  # fmt: skip
    assert got.capacity_bytes == 32 * MiB
    assert size_of(target) == size_of(ro_target) == 32 * MiB
    tail = os.urandom(MiB)
    fd = os.open(target, os.O_RDWR)
    try:
        os.pwrite(fd, tail, 30 * MiB)  # in the new space
        os.fsync(fd)
    finally:
        os.close(fd)
    N.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=ro_target))
    assert ro_loop not in loops()
    unpublish_and_unstage(drv, vid, staging, target)
    no_engine(vid)
    # published again: the bytes are there, old and new
    staging, target = stage_and_publish(drv, work, vid, cap)
    assert size_of(target) == 32 * MiB
    with open(target, "rb") as f:
        f.seek(4 * MiB)
        assert f.read(MiB) == data
        f.seek(30 * MiB)
        assert f.read(MiB) == tail
    unpublish_and_unstage(drv, vid, staging, target)
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert leftovers(work / "state") == []
    no_engine(vid)


def test_read_only_many_readers(env, other_node) -> None:  # type: ignore[no-untyped-def]
    """ReadOnlyMany: two nodes read through one engine, mounted ro,noload; a repeat
    publish with another readonly flag is ALREADY_EXISTS; unpublishing the engine's node
    leaves the other reading; the last unpublish detaches."""
    _, drv, work = env
    drv2 = other_node("node-2")
    C = drv.ctl
    rwo = mount_cap()
    vid = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-rox", capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
        volume_capabilities=[rwo, mount_cap(AM.MULTI_NODE_READER_ONLY)],
        parameters={"numberOfReplicas": "2"},
    )).volume.volume_id  # fmt: skip
    staging, target = stage_and_publish(drv, work, vid, rwo)  # fill it first
    files = write_files(target, 8)
    unpublish_and_unstage(drv, vid, staging, target)

    rox = mount_cap(AM.MULTI_NODE_READER_ONLY)
    s1, t1 = stage_and_publish(drv, work, vid, rox, node="node-1", ro=True)
    s2, t2 = stage_and_publish(drv2, drv2.work, vid, rox, node="node-2", ro=True, ctl=C)
    for staged in (s1, s2):
        opts = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", staged], capture_output=True,
                              text=True).stdout.strip().split(",")  # fmt: skip
        assert "ro" in opts, opts
        assert record(drv if staged == s1 else drv2, vid)["read_only"]
    for t in (t1, t2):
        with pytest.raises(OSError):
            Path(t, "new").write_text("a reader does not write")
    for name in ("f0.bin", "f1.bin"):
        assert Path(t2, name).read_bytes() == files[name]
    conflict = pb.ControllerPublishVolumeRequest(
        volume_id=vid, node_id="node-2", volume_capability=rox, readonly=False
    )
    assert code_of(C.ControllerPublishVolume, conflict) == grpc.StatusCode.ALREADY_EXISTS
    got = C.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid))
    assert sorted(got.status.published_node_ids) == ["node-1", "node-2"]

    # node-1 (where the engine runs) lets go: node-2 still reads, files it never read
    unpublish_and_unstage(drv, vid, s1, t1, node="node-1")
    got = C.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid))
    assert list(got.status.published_node_ids) == ["node-2"]
    assert engines(vid)
    for name in ("f2.bin", "f5.bin", "f7.bin"):
        assert Path(t2, name).read_bytes() == files[name]
    unpublish_and_unstage(drv2, vid, s2, t2, node="node-2", ctl=C)
    got = C.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid))
    assert list(got.status.published_node_ids) == []
    no_engine(vid)
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert leftovers(work / "state") == [] and leftovers(drv2.state) == []


def test_volume_clone_and_fs_group(env) -> None:  # type: ignore[no-untyped-def]
    """A PVC cloned from a PVC (VolumeContentSource.volume) has its files; published with
    a pod's fsGroup (volume_mount_group) its files and directories are the group's, rw
    for it, and what the group's processes create stays the group's."""
    _, drv, work = env
    C, N = drv.ctl, drv.node
    cap = mount_cap()
    src = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-src", capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "1"},
    )).volume.volume_id  # fmt: skip
    staging, target = stage_and_publish(drv, work, src, cap)
    files = write_files(target, 3)
    Path(target, "sub").mkdir()
    Path(target, "sub", "deep").write_text("deep")
    subprocess.run(["sync"], check=True)
    req = pb.CreateVolumeRequest(
        name="pvc-clone", capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "1"},
        volume_content_source=pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=src)),
    )  # fmt: skip
    clone = C.CreateVolume(req).volume
    assert clone.content_source.volume.volume_id == src
    assert C.CreateVolume(req).volume.volume_id == clone.volume_id  # idempotent
    other = pb.CreateVolumeRequest()
    other.CopyFrom(req)
    other.ClearField("volume_content_source")
    assert code_of(C.CreateVolume, other) == grpc.StatusCode.ALREADY_EXISTS
    missing = pb.CreateVolumeRequest()
    missing.CopyFrom(req)
    missing.name = "pvc-clone-2"
    missing.volume_content_source.volume.volume_id = "pvc-nope"
    assert code_of(C.CreateVolume, missing) == grpc.StatusCode.NOT_FOUND
    unpublish_and_unstage(drv, src, staging, target)

    gid = 2345
    gcap = pb.VolumeCapability()
    gcap.CopyFrom(cap)
    gcap.mount.volume_mount_group = str(gid)
    cstaging, ctarget = stage_and_publish(drv, work, clone.volume_id, gcap)
    for name, data in files.items():
        assert Path(ctarget, name).read_bytes() == data
    assert Path(ctarget, "sub", "deep").read_text() == "deep"
    for p in [Path(ctarget), Path(ctarget, "sub"), Path(ctarget, "sub", "deep"),
              *(Path(ctarget, n) for n in files)]:  # fmt: skip
        st = p.stat()
        assert st.st_gid == gid, p
        assert st.st_mode & 0o060 == 0o060, (p, oct(st.st_mode))
        if p.is_dir():
            assert st.st_mode & stat.S_ISGID and st.st_mode & 0o010, (p, oct(st.st_mode))
    # a process of the pod: another user, only the fsGroup in common with the files
    out = subprocess.run(
        ["/bin/sh", "-c", 'echo pod > "$1"', "sh", str(Path(ctarget, "sub", "by-pod"))],
        user=4321, group=gid, extra_groups=[], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Path(ctarget, "sub", "by-pod").stat().st_gid == gid
    bad = pb.VolumeCapability()
    bad.CopyFrom(cap)
    bad.mount.volume_mount_group = "staff"
    assert code_of(N.NodePublishVolume, pb.NodePublishVolumeRequest(
        volume_id=clone.volume_id, staging_target_path=cstaging, target_path=str(work / "g"),
        volume_capability=bad)) == grpc.StatusCode.INVALID_ARGUMENT  # fmt: skip
    unpublish_and_unstage(drv, clone.volume_id, cstaging, ctarget)
    for vid in (clone.volume_id, src):
        C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert leftovers(work / "state") == []


def test_node_dies_while_staged(env, other_node) -> None:  # type: ignore[no-untyped-def]
    """node-3 dies (agent, replica server and engine killed) while it has the volume
    staged and mounted; ControllerPublish on node-1 takes the volume over (the manager
    fences the old engine) and staging there finds every fsynced file."""
    cluster, drv, work = env
    drv3 = other_node("node-3")  # node-3's plugin: it outlives the node here, to clean up
    C = drv.ctl
    cap = mount_cap()
    vid = C.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-failover", capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "3", "staleReplicaTimeout": "5m"},
    )).volume.volume_id  # fmt: skip
    s3, t3 = stage_and_publish(drv3, drv3.work, vid, cap, node="node-3", ctl=C)
    pub = C.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(volume_id=vid, node_id="node-3", volume_capability=cap)
    )
    files = write_files(t3)
    cluster.kill_node("node-3")  # no unpublish, no unstage: the node is gone
    try:
        # node-3 is up until node_down_after passes: FAILED_PRECONDITION, the CO retries
        deadline = time.monotonic() + 60
        while True:
            try:
                pub2 = C.ControllerPublishVolume(pb.ControllerPublishVolumeRequest(
                    volume_id=vid, node_id="node-1", volume_capability=cap), timeout=90)  # fmt: skip
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.details()
                assert time.monotonic() < deadline, "no takeover"
                time.sleep(1)
        assert pub2.publish_context["endpoint"] != pub.publish_context["endpoint"]
        assert int(pub2.publish_context["epoch"]) > int(pub.publish_context["epoch"])
        staging = str(work / "staging" / vid)
        drv.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap, publish_context=pub2.publish_context))  # fmt: skip
        for name, data in files.items():
            assert Path(staging, name).read_bytes() == data
        got = C.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id=vid))
        assert got.status.volume_condition.abnormal, got.status.volume_condition.message
        assert "degraded" in got.status.volume_condition.message
        assert list(got.status.published_node_ids) == ["node-1"]
        # the dead node's plugin still tears its side down (its engine is gone)
        drv3.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=t3))
        drv3.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=s3)
        )
        assert leftovers(drv3.state) == []
        drv.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging)
        )
        C.ControllerUnpublishVolume(
            pb.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-1")
        )
    finally:
        with contextlib.suppress(Exception):
            cluster.start_node("node-3")
    no_engine(vid)
    C.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    assert leftovers(work / "state") == []


def test_probe_not_ready_while_the_manager_is_down(env) -> None:  # type: ignore[no-untyped-def]
    cluster, drv, _ = env
    assert drv.identity.Probe(pb.ProbeRequest()).ready.value is True
    manager = cluster.managers[0].id
    cluster.kill_manager(manager)
    try:
        assert drv.identity.Probe(pb.ProbeRequest(), timeout=30).ready.value is False
        assert code_of(drv.ctl.ListVolumes, pb.ListVolumesRequest()) == grpc.StatusCode.UNAVAILABLE
    finally:
        cluster.start_manager(manager)
    assert drv.identity.Probe(pb.ProbeRequest()).ready.value is True
