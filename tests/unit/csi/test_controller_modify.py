"""ControllerModifyVolume (csi/controller_modify.py) with an in-memory manager, called
directly and through a real gRPC server and channel: MODIFY_VOLUME is advertised; the
mutable parameters become the manager's QoS merge patch; a repeat changes nothing;
unknown or bad parameters are INVALID_ARGUMENT (naming them) and change nothing; an
unknown volume is NOT_FOUND; an attached volume is changed in place (no detach)."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
import pytest

from cargohold import qos_limits
from cargohold.csi import stubs
from cargohold.csi.controller import Controller
from cargohold.csi.publications import Publications
from cargohold.errors import InvalidArgument
from tests.unit.csi.test_controller import Context, FakeManager, code

pb, pb_grpc = stubs()
Code = grpc.StatusCode


class QosManager(FakeManager):
    def __init__(self) -> None:
        super().__init__()
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.created: dict[str, Any] = {}

    def update_volume(self, name: str, qos: dict[str, Any]) -> dict[str, Any]:
        v = self.volume(name)
        limits = qos_limits.merge(self.vols[name].get("qos", {}), qos)  # as the manager does
        self.vols[name]["qos"] = limits
        self.updates.append((name, qos))
        return v

    def create_volume(self, name: str, size: int, **kw: Any) -> dict[str, Any]:
        self.created = kw
        self.add(name)
        return self.volume(name)


@pytest.fixture
def mgr() -> QosManager:
    m = QosManager()
    m.add("pvc-a")
    return m


@pytest.fixture
def ctl(mgr: QosManager) -> Controller:
    return Controller(mgr, publications=Publications(), timeout=1)  # type: ignore[arg-type]


def modify(vid: str, **params: str) -> Any:
    return pb.ControllerModifyVolumeRequest(volume_id=vid, mutable_parameters=params)


def test_modify_volume_is_advertised(ctl: Controller) -> None:
    got = ctl.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest(), Context())
    R = pb.ControllerServiceCapability.RPC
    assert R.MODIFY_VOLUME in {c.rpc.type for c in got.capabilities}


def test_the_parameters_become_the_limits_and_a_repeat_changes_nothing(
    ctl: Controller, mgr: QosManager
) -> None:
    req = modify("pvc-a", maxIops="2k", maxBandwidth="100Mi", burstSeconds="1s")
    ctl.ControllerModifyVolume(req, Context())
    want = {"max_iops": 2000, "max_bandwidth": 100 << 20, "burst_seconds": 1.0}
    assert mgr.vols["pvc-a"]["qos"] == want
    ctl.ControllerModifyVolume(req, Context())  # idempotent
    assert mgr.vols["pvc-a"]["qos"] == want
    ctl.ControllerModifyVolume(modify("pvc-a", maxBandwidth="unlimited"), Context())
    assert mgr.vols["pvc-a"]["qos"] == {"max_iops": 2000, "burst_seconds": 1.0}


def test_an_attached_volume_is_changed_in_place(ctl: Controller, mgr: QosManager) -> None:
    mgr.attach("pvc-a", "n1")
    ctl.ControllerModifyVolume(modify("pvc-a", maxReadIops="500"), Context())
    assert mgr.vols["pvc-a"]["state"] == "attached" and mgr.detaches == 0
    assert mgr.vols["pvc-a"]["qos"] == {"max_read_iops": 500}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"maxIops": "5"}, "maxIops='5' is not valid: use an integer from 10 to 10000000"),
        ({"maxIops": "lots"}, "maxIops='lots'"),
        ({"maxBandwidth": "1k"}, "maxBandwidth='1k' is not valid"),
        ({"burstSeconds": "100"}, "burstSeconds='100'"),
        ({"fsType": "xfs"}, "unknown mutable parameter fsType: cargohold can change maxIops"),
        ({"maxIops": "1000", "colour": "red"}, "unknown mutable parameter colour"),
    ],
)
def test_unknown_or_bad_parameters_are_invalid_and_change_nothing(
    ctl: Controller, mgr: QosManager, params: dict[str, str], words: str
) -> None:
    from tests.unit.csi.test_controller import Abort

    with pytest.raises(Abort) as e:
        ctl.ControllerModifyVolume(modify("pvc-a", **params), Context())
    assert e.value.code == Code.INVALID_ARGUMENT
    assert words in e.value.message
    assert mgr.updates == []


def test_an_unknown_volume_is_not_found(ctl: Controller) -> None:
    assert code(ctl.ControllerModifyVolume, modify("pvc-zz", maxIops="100")) == Code.NOT_FOUND
    assert code(ctl.ControllerModifyVolume, modify("", maxIops="100")) == Code.INVALID_ARGUMENT


def test_the_manager_refusing_a_value_is_invalid_argument(
    ctl: Controller, mgr: QosManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(name: str, qos: dict[str, Any]) -> None:
        raise InvalidArgument("max_iops=3 is not valid")

    monkeypatch.setattr(mgr, "update_volume", refuse)
    assert code(ctl.ControllerModifyVolume, modify("pvc-a", maxIops="100")) == (
        Code.INVALID_ARGUMENT
    )


def test_create_volume_takes_qos_from_the_class_and_the_mutable_parameters(
    ctl: Controller, mgr: QosManager
) -> None:
    cap = pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=1),
    )
    req = pb.CreateVolumeRequest(
        name="pvc-new",
        volume_capabilities=[cap],
        capacity_range=pb.CapacityRange(required_bytes=1 << 20),
        parameters={"maxIops": "1000", "maxBandwidth": "50Mi"},
        mutable_parameters={"maxIops": "3000"},
    )
    ctl.CreateVolume(req, Context())
    assert mgr.created["qos"] == {"max_iops": 3000, "max_bandwidth": 50 << 20}
    bad = pb.CreateVolumeRequest(
        name="pvc-bad", volume_capabilities=[cap], parameters={"maxIops": "many"}
    )
    assert code(ctl.CreateVolume, bad) == Code.INVALID_ARGUMENT


def test_over_a_real_grpc_channel(mgr: QosManager) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ControllerServicer_to_server(
        Controller(mgr, publications=Publications(), timeout=1),  # type: ignore[arg-type]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.ControllerStub(ch)
            stub.ControllerModifyVolume(modify("pvc-a", maxWriteIops="800"), timeout=10)
            stub.ControllerModifyVolume(modify("pvc-a", maxWriteIops="800"), timeout=10)
            assert mgr.vols["pvc-a"]["qos"] == {"max_write_iops": 800}
            with pytest.raises(grpc.RpcError) as e:
                stub.ControllerModifyVolume(modify("pvc-a", maxWriteIops="x"), timeout=10)
            assert e.value.code() == Code.INVALID_ARGUMENT
            assert "maxWriteIops='x'" in (e.value.details() or "")
            with pytest.raises(grpc.RpcError) as e:
                stub.ControllerModifyVolume(modify("pvc-zz", maxIops="100"), timeout=10)
            assert e.value.code() == Code.NOT_FOUND
    finally:
        server.stop(0)
