"""ControllerModifyVolume (CSI 1.12, the MODIFY_VOLUME capability): a Kubernetes
VolumeAttributesClass change reaches a volume in use, attached or not, without a detach.

The mutable parameters are the QoS limits (docs/qos.md, docs/kubernetes.md): ``maxIops``,
``maxReadIops``, ``maxWriteIops``, ``maxBandwidth``, ``maxReadBandwidth``,
``maxWriteBandwidth``, ``burstSeconds``; the values are those of the StorageClass
parameters (``10k``, ``100Mi``; ``unlimited`` removes a limit). Limits a class does not
name stay as they are. The same limits may come with CreateVolume's
``mutable_parameters`` (a PVC created with a VolumeAttributesClass).

Contract: any other parameter, or a bad value, is INVALID_ARGUMENT naming it and its
allowed values (and nothing changes); an unknown volume NOT_FOUND; a repeat of the same
change succeeds and changes nothing (the manager's PATCH is a merge). The call returns
once the manager stored the limits; a running engine applies them within a second.
"""

from __future__ import annotations

from typing import Any

from cargohold import qos_limits
from cargohold.csi import stubs
from cargohold.csi.controller_base import ControllerBase
from cargohold.csi.errors import invalid, rpc
from cargohold.csi.parameters import qos_parameters

pb, _ = stubs()


def mutable_qos(params: Any) -> dict[str, Any]:
    """``mutable_parameters`` -> the QoS merge patch; INVALID_ARGUMENT for anything else."""
    params = dict(params)
    unknown = sorted(k for k in params if k not in qos_limits.BY_CSI)
    if unknown:
        raise invalid(
            f"unknown mutable parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"cargohold can change {', '.join(qos_limits.BY_CSI)}"
        )
    return qos_parameters(params, "mutable parameter")


class ModifyRpcs(ControllerBase):
    @rpc
    def ControllerModifyVolume(self, req: Any, context: Any) -> Any:
        change = mutable_qos(req.mutable_parameters)  # checked before anything is looked up
        vol = self._volume(req.volume_id)
        if change:
            with self.locks.hold(vol["name"], "ControllerModifyVolume"):
                self.client.update_volume(vol["name"], change)
        return pb.ControllerModifyVolumeResponse()
