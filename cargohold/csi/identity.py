"""The CSI Identity service: who the driver is, what it can do, whether it is ready.

Probe answers ready only while the manager answers (``GET /healthz``); before that the
sidecars (livenessprobe, node-driver-registrar) wait. Served by every ``cargohold csi``.

GetPluginCapabilities is the same in every instance, whatever services it serves (the CSI
spec: "the same ... regardless of which RPCs the instance serves"): it describes the
plugin, not the process. A node-only instance that left out CONTROLLER_SERVICE would make
a caller skip ControllerPublish and stage without a publish context.
"""

from __future__ import annotations

from typing import Any

from cargohold import __version__
from cargohold.control.client import ManagerClient
from cargohold.csi import DRIVER_NAME, stubs
from cargohold.csi.errors import rpc
from cargohold.errors import CargoholdError

pb, pb_grpc = stubs()


class Identity(pb_grpc.IdentityServicer):  # type: ignore[name-defined]  # generated, loaded at run time (stubs())
    def __init__(self, client: ManagerClient) -> None:
        self.client = client

    @rpc
    def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return pb.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    @rpc
    def GetPluginCapabilities(self, request: Any, context: Any) -> Any:
        svc = pb.PluginCapability.Service
        caps = [
            pb.PluginCapability(service=svc(type=svc.CONTROLLER_SERVICE)),
            pb.PluginCapability(service=svc(type=svc.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            # served by the controller instance (csi/server.py), advertised by every one
            pb.PluginCapability(service=svc(type=svc.GROUP_CONTROLLER_SERVICE)),
            pb.PluginCapability(service=svc(type=svc.SNAPSHOT_METADATA_SERVICE)),
        ]
        exp = pb.PluginCapability.VolumeExpansion
        caps.append(pb.PluginCapability(volume_expansion=exp(type=exp.ONLINE)))
        return pb.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc
    def Probe(self, request: Any, context: Any) -> Any:
        from google.protobuf.wrappers_pb2 import BoolValue

        try:
            self.client.healthz()
        except CargoholdError:
            return pb.ProbeResponse(ready=BoolValue(value=False))
        return pb.ProbeResponse(ready=BoolValue(value=True))
