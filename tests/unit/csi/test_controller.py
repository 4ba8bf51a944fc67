"""The CSI Controller and Node servicers called directly, with an in-memory manager: every
RPC refuses missing arguments with INVALID_ARGUMENT, a second operation on a volume in
flight is ABORTED, the capabilities are all listed, and the publication rules (readonly
conflicts, ReadOnlyMany readers) hold. The same RPCs against real processes:
tests/e2e/test_csi.py."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

from cargohold.control.client import volume_attached, volume_detached
from cargohold.csi import stubs
from cargohold.csi.controller import CAPABILITIES, Controller
from cargohold.csi.identity import Identity
from cargohold.csi.node import Node
from cargohold.csi.publications import Publications
from cargohold.errors import NotFound

pb, _ = stubs()
AM = pb.VolumeCapability.AccessMode
MiB = 1 << 20


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Context:
    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Abort(code, message)


class FakeManager:
    """What the controller asks of ``ManagerClient``, in memory."""

    def __init__(self) -> None:
        self.vols: dict[str, dict[str, Any]] = {}
        self.nodes_ = {n: {"name": n, "state": "up", "zone": ""} for n in ("n1", "n2", "n3")}
        self.entered = threading.Event()
        self.detaches = 0

    def add(self, name: str) -> None:
        self.vols[name] = {
            "name": name, "size_bytes": 64 * MiB, "state": "detached", "attached_node": None,
            "endpoint": "", "engine": None, "replicas_wanted": 1, "source": None,
        }  # fmt: skip

    def volume(self, name: str) -> dict[str, Any]:
        if name not in self.vols:
            raise NotFound(f"volume {name} not found")
        return dict(self.vols[name])

    def volumes(self) -> list[dict[str, Any]]:
        return [dict(v) for v in self.vols.values()]

    def node(self, name: str) -> dict[str, Any]:
        if name not in self.nodes_:
            raise NotFound(f"node {name} not found")
        return self.nodes_[name]

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.nodes_.values())

    def attach(self, name: str, node: str) -> None:
        v = self.vols[name]
        v.update(state="attached", attached_node=node, endpoint=f"nbd://{node}:1/{name}")
        v["engine"] = {"node": node, "running": True}

    def detach(self, name: str, force: bool = False) -> None:
        assert force, "ControllerUnpublish forces the detach (the node unstaged already)"
        self.detaches += 1
        v = self.vols[name]
        v.update(state="detached", attached_node=None, endpoint="", engine=None)

    def attachments(self) -> list[dict[str, Any]]:
        return [
            {"volume": v["name"], "node": v["attached_node"]}
            for v in self.vols.values()
            if v["attached_node"]
        ]

    def wait_volume(self, name: str, pred: Any, timeout: float) -> dict[str, Any]:
        v = self.volume(name)
        assert pred(v), v
        return v

    def wait_attached(self, name: str, node: str | None, timeout: float) -> dict[str, Any]:
        return self.wait_volume(name, lambda v: volume_attached(v, node), timeout)

    def wait_detached(self, name: str, timeout: float) -> dict[str, Any]:
        return self.wait_volume(name, volume_detached, timeout)


@pytest.fixture
def mgr() -> FakeManager:
    m = FakeManager()
    m.add("pvc-a")
    return m


@pytest.fixture
def ctl(mgr: FakeManager) -> Controller:
    return Controller(mgr, publications=Publications(), timeout=1)  # type: ignore[arg-type]


@pytest.fixture
def node(mgr: FakeManager, tmp_path: Any) -> Node:
    return Node(mgr, "n1", str(tmp_path / "state"))  # type: ignore[arg-type]


def cap(mode: int = AM.SINGLE_NODE_WRITER, block: bool = False) -> Any:
    if block:
        return pb.VolumeCapability(
            block=pb.VolumeCapability.BlockVolume(), access_mode=AM(mode=mode)
        )
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(), access_mode=AM(mode=mode))


def code(fn: Any, req: Any) -> grpc.StatusCode:
    with pytest.raises(Abort) as e:
        fn(req, Context())
    return e.value.code


CR = pb.CapacityRange(required_bytes=MiB)
CTX = {"endpoint": "nbd://127.0.0.1:1/pvc-a"}
CONTROLLER_MISSING = [
    ("CreateVolume", pb.CreateVolumeRequest(volume_capabilities=[cap()])),
    ("CreateVolume", pb.CreateVolumeRequest(name="pvc-b")),
    ("DeleteVolume", pb.DeleteVolumeRequest()),
    ("ControllerPublishVolume", pb.ControllerPublishVolumeRequest(node_id="n1", volume_capability=cap())),
    ("ControllerPublishVolume", pb.ControllerPublishVolumeRequest(volume_id="pvc-a", volume_capability=cap())),
    ("ControllerPublishVolume", pb.ControllerPublishVolumeRequest(volume_id="pvc-a", node_id="n1")),
    ("ControllerUnpublishVolume", pb.ControllerUnpublishVolumeRequest(node_id="n1")),
    ("ValidateVolumeCapabilities", pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[cap()])),
    ("ValidateVolumeCapabilities", pb.ValidateVolumeCapabilitiesRequest(volume_id="pvc-a")),
    ("ControllerExpandVolume", pb.ControllerExpandVolumeRequest(capacity_range=CR)),
    ("ControllerExpandVolume", pb.ControllerExpandVolumeRequest(volume_id="pvc-a")),
    ("ControllerGetVolume", pb.ControllerGetVolumeRequest()),
    ("CreateSnapshot", pb.CreateSnapshotRequest(name="s")),
    ("CreateSnapshot", pb.CreateSnapshotRequest(source_volume_id="pvc-a")),
    ("DeleteSnapshot", pb.DeleteSnapshotRequest()),
    ("ListVolumes", pb.ListVolumesRequest(max_entries=-1)),
    ("GetCapacity", pb.GetCapacityRequest(parameters={"fsType": "zfs"})),
]  # fmt: skip
NODE_MISSING = [
    ("NodeStageVolume", pb.NodeStageVolumeRequest(staging_target_path="/s", volume_capability=cap(), publish_context=CTX)),
    ("NodeStageVolume", pb.NodeStageVolumeRequest(volume_id="pvc-a", volume_capability=cap(), publish_context=CTX)),
    ("NodeStageVolume", pb.NodeStageVolumeRequest(volume_id="pvc-a", staging_target_path="/s", publish_context=CTX)),
    ("NodeStageVolume", pb.NodeStageVolumeRequest(volume_id="pvc-a", staging_target_path="/s", volume_capability=cap())),
    ("NodeUnstageVolume", pb.NodeUnstageVolumeRequest(staging_target_path="/s")),
    ("NodeUnstageVolume", pb.NodeUnstageVolumeRequest(volume_id="pvc-a")),
    ("NodePublishVolume", pb.NodePublishVolumeRequest(target_path="/t", staging_target_path="/s", volume_capability=cap())),
    ("NodePublishVolume", pb.NodePublishVolumeRequest(volume_id="pvc-a", staging_target_path="/s", volume_capability=cap())),
    ("NodePublishVolume", pb.NodePublishVolumeRequest(volume_id="pvc-a", target_path="/t", volume_capability=cap())),
    ("NodePublishVolume", pb.NodePublishVolumeRequest(volume_id="pvc-a", target_path="/t", staging_target_path="/s")),
    ("NodeUnpublishVolume", pb.NodeUnpublishVolumeRequest(target_path="/t")),
    ("NodeUnpublishVolume", pb.NodeUnpublishVolumeRequest(volume_id="pvc-a")),
    ("NodeGetVolumeStats", pb.NodeGetVolumeStatsRequest(volume_path="/t")),
    ("NodeGetVolumeStats", pb.NodeGetVolumeStatsRequest(volume_id="pvc-a")),
    ("NodeExpandVolume", pb.NodeExpandVolumeRequest(volume_path="/t")),
    ("NodeExpandVolume", pb.NodeExpandVolumeRequest(volume_id="pvc-a")),
]  # fmt: skip


@pytest.mark.parametrize(("rpc", "req"), CONTROLLER_MISSING, ids=lambda x: str(x)[:40])
def test_controller_refuses_missing_arguments(ctl: Controller, rpc: str, req: Any) -> None:
    assert code(getattr(ctl, rpc), req) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("rpc", "req"), NODE_MISSING, ids=lambda x: str(x)[:40])
def test_node_refuses_missing_arguments(node: Node, rpc: str, req: Any) -> None:
    assert code(getattr(node, rpc), req) == grpc.StatusCode.INVALID_ARGUMENT


def test_controller_capabilities_list_every_rpc_it_serves(ctl: Controller) -> None:
    got = ctl.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest(), Context())
    types = {c.rpc.type for c in got.capabilities}
    R = pb.ControllerServiceCapability.RPC
    assert types == set(CAPABILITIES)
    for name in ("CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME", "LIST_VOLUMES",
                 "GET_CAPACITY", "CREATE_DELETE_SNAPSHOT", "LIST_SNAPSHOTS", "CLONE_VOLUME",
                 "PUBLISH_READONLY", "EXPAND_VOLUME", "LIST_VOLUMES_PUBLISHED_NODES",
                 "VOLUME_CONDITION", "GET_VOLUME", "SINGLE_NODE_MULTI_WRITER"):  # fmt: skip
        assert R.Type.Value(name) in types, name


def test_a_second_operation_on_a_volume_in_flight_is_aborted(
    mgr: FakeManager, ctl: Controller
) -> None:
    """While one RPC works on a volume (here: ControllerPublish, held inside its manager
    call), another RPC on it does not wait: ABORTED at once, and the CO retries."""
    gate = threading.Event()
    calls = {"n": 0}
    plain = mgr.volume

    def volume(name: str) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 2:  # the publish's look-up under the volume's lock
            mgr.entered.set()
            gate.wait(10)
        return plain(name)

    mgr.volume = volume  # type: ignore[method-assign]
    req = pb.ControllerPublishVolumeRequest(
        volume_id="pvc-a", node_id="n1", volume_capability=cap()
    )
    done: list[Any] = []
    first = threading.Thread(
        target=lambda: done.append(ctl.ControllerPublishVolume(req, Context()))
    )
    first.start()
    try:
        assert mgr.entered.wait(5)
        for rpc, other in (
            (ctl.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(volume_id="pvc-a", capacity_range=CR)),
            (ctl.ControllerUnpublishVolume, pb.ControllerUnpublishVolumeRequest(volume_id="pvc-a", node_id="n1")),
            (ctl.DeleteVolume, pb.DeleteVolumeRequest(volume_id="pvc-a")),
        ):  # fmt: skip
            with pytest.raises(Abort) as e:
                rpc(other, Context())
            assert e.value.code == grpc.StatusCode.ABORTED, e.value
            assert "ControllerPublishVolume" in e.value.message
    finally:
        gate.set()
        first.join(10)
    assert done and done[0].publish_context["endpoint"]
    # once it is done, the next one goes through
    ctl.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id="pvc-a", node_id="n1"), Context()
    )


def publish(ctl: Controller, node: str, c: Any, readonly: bool) -> Any:
    return ctl.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id="pvc-a", node_id=node, volume_capability=c, readonly=readonly
        ),
        Context(),
    )


def unpublish(ctl: Controller, node: str) -> None:
    ctl.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id="pvc-a", node_id=node), Context()
    )


def test_a_repeat_publish_with_another_readonly_flag_is_already_exists(ctl: Controller) -> None:
    publish(ctl, "n1", cap(), False)
    publish(ctl, "n1", cap(), False)  # the same: idempotent
    with pytest.raises(Abort) as e:
        publish(ctl, "n1", cap(), True)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and "read-write" in e.value.message
    with pytest.raises(Abort) as e:
        publish(ctl, "n1", cap(block=True), False)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_readers_keep_the_engine_until_the_last_unpublish(
    mgr: FakeManager, ctl: Controller
) -> None:
    rox = cap(AM.MULTI_NODE_READER_ONLY)
    first = publish(ctl, "n1", rox, True)
    assert (
        publish(ctl, "n2", rox, True).publish_context["endpoint"]
        == (first.publish_context["endpoint"])
    )
    publish(ctl, "n3", rox, True)
    vol = ctl.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id="pvc-a"), Context())
    assert list(vol.status.published_node_ids) == ["n1", "n2", "n3"]
    unpublish(ctl, "n1")  # the engine's node: the others still read through it
    unpublish(ctl, "n1")
    assert mgr.vols["pvc-a"]["attached_node"] == "n1" and mgr.detaches == 0
    unpublish(ctl, "n3")
    assert mgr.detaches == 0
    vol = ctl.ControllerGetVolume(pb.ControllerGetVolumeRequest(volume_id="pvc-a"), Context())
    assert list(vol.status.published_node_ids) == ["n2"]
    unpublish(ctl, "n2")  # the last one
    assert mgr.detaches == 1 and mgr.vols["pvc-a"]["attached_node"] is None
    unpublish(ctl, "n2")
    assert mgr.detaches == 1


def test_a_reader_cannot_join_a_writer(ctl: Controller) -> None:
    publish(ctl, "n1", cap(), False)
    with pytest.raises(Abort) as e:
        publish(ctl, "n2", cap(AM.MULTI_NODE_READER_ONLY), True)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_an_unknown_node_unpublishing_does_not_detach_the_writer(
    mgr: FakeManager, ctl: Controller
) -> None:
    publish(ctl, "n1", cap(), False)
    unpublish(ctl, "n2")
    assert mgr.detaches == 0 and mgr.vols["pvc-a"]["attached_node"] == "n1"
    unpublish(ctl, "n1")
    assert mgr.detaches == 1


def test_publications_survive_a_restart_of_the_controller(mgr: FakeManager, tmp_path: Any) -> None:
    rox = cap(AM.MULTI_NODE_READER_ONLY)
    a = Controller(mgr, publications=Publications(str(tmp_path)), timeout=1)  # type: ignore[arg-type]
    publish(a, "n1", rox, True)
    publish(a, "n2", rox, True)
    b = Controller(mgr, publications=Publications(str(tmp_path)), timeout=1)  # type: ignore[arg-type]
    unpublish(b, "n1")
    assert mgr.detaches == 0
    with pytest.raises(Abort) as e:
        publish(b, "n2", rox, False)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    unpublish(b, "n2")
    assert mgr.detaches == 1


def test_node_needs_the_nodes_credentials_for_an_nbds_endpoint(node: Node, tmp_path: Any) -> None:
    """NBD over TLS: without CARGOHOLD_CSI_NBD_TLS_DIR nothing is attached, and the error
    says what to give; with it, the credentials are laid out in GnuTLS names."""
    tls = {"endpoint": "nbds://10.0.0.7:10809/pvc-a"}
    req = pb.NodeStageVolumeRequest(
        volume_id="pvc-a", staging_target_path="/s", volume_capability=cap(), publish_context=tls
    )
    assert code(node.NodeStageVolume, req) == grpc.StatusCode.FAILED_PRECONDITION
    assert not (tmp_path / "state" / "pvc-a.json").exists()
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt", "ca.crl"):
        (creds / name).write_text(name)
    node.nbd_tls_dir = str(creds)
    x509 = node._x509_dir("pvc-a", tls["endpoint"])
    assert (tmp_path / "state" / "x509" / "client-cert.pem").read_text() == "tls.crt"
    assert x509 == str(tmp_path / "state" / "x509")
    assert node._x509_dir("pvc-a", "nbd://127.0.0.1:1/pvc-a") == ""  # local: no TLS


# --- the attach limit ---------------------------------------------------------------------


def publish_vol(ctl: Controller, vid: str, node: str, c: Any = None, ro: bool = False) -> Any:
    return ctl.ControllerPublishVolume(
        pb.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=node, volume_capability=c or cap(), readonly=ro
        ),
        Context(),
    )


def test_a_full_node_refuses_the_next_volume_with_resource_exhausted(mgr: FakeManager) -> None:
    for v in ("pvc-b", "pvc-c", "pvc-d"):
        mgr.add(v)
    ctl = Controller(mgr, publications=Publications(), timeout=1, max_volumes=2)  # type: ignore[arg-type]
    publish_vol(ctl, "pvc-a", "n1")
    publish_vol(ctl, "pvc-b", "n1")
    publish_vol(ctl, "pvc-a", "n1")  # a repeat is not one more volume
    with pytest.raises(Abort) as e:
        publish_vol(ctl, "pvc-c", "n1")
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node n1 has 2 volumes" in e.value.message and "max_volumes_per_node" in e.value.message
    assert "is 2" in e.value.message
    assert mgr.vols["pvc-c"]["attached_node"] is None  # nothing was attached
    publish_vol(ctl, "pvc-c", "n2")  # another node has room
    ctl.ControllerUnpublishVolume(
        pb.ControllerUnpublishVolumeRequest(volume_id="pvc-b", node_id="n1"), Context()
    )
    publish_vol(ctl, "pvc-d", "n1")  # a place was freed


def test_the_limit_counts_what_the_manager_has_attached_and_the_readers(mgr: FakeManager) -> None:
    """Volumes attached outside CSI (the CLI) count, as do ReadOnlyMany readers whose
    engine runs on another node."""
    for v in ("pvc-b", "pvc-c", "pvc-x"):
        mgr.add(v)
    mgr.attach("pvc-x", "n1")  # `cargohold volume attach pvc-x n1`
    ctl = Controller(mgr, publications=Publications(), timeout=1, max_volumes=1)  # type: ignore[arg-type]
    with pytest.raises(Abort) as e:
        publish_vol(ctl, "pvc-a", "n1")
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    rox = cap(AM.MULTI_NODE_READER_ONLY)
    publish_vol(ctl, "pvc-b", "n2", rox, True)
    publish_vol(ctl, "pvc-b", "n3", rox, True)  # a reader on n3, the engine on n2
    with pytest.raises(Abort) as e:
        publish_vol(ctl, "pvc-c", "n3")
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "node n3" in e.value.message


def test_no_limit_by_default(mgr: FakeManager, ctl: Controller) -> None:
    for i in range(20):
        mgr.add(f"pvc-{i}")
        publish_vol(ctl, f"pvc-{i}", "n1")


def test_plugin_capabilities_do_not_depend_on_the_services_served(mgr: FakeManager) -> None:
    """A node-only instance lists CONTROLLER_SERVICE too (CSI: every instance answers the
    same), or a caller asking it would skip ControllerPublish."""
    caps = Identity(mgr).GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), Context())  # type: ignore[arg-type]
    svc = {c.service.type for c in caps.capabilities if c.HasField("service")}
    assert pb.PluginCapability.Service.CONTROLLER_SERVICE in svc
