"""The CSI Controller service: CSI calls → manager API calls (docs/control-plane.md).

Mapping (documented for users in docs/kubernetes.md):
- volume id = the manager volume's name, derived from the CO's request name
  (``parameters.volume_name``); CreateVolume of an existing name with compatible
  parameters returns it, with incompatible ones ALREADY_EXISTS.
- ControllerPublish(volume, node) = attach on that node, waiting until its engine runs;
  the publish context carries the engine's NBD URI (``endpoint``). Attached to another
  node → FAILED_PRECONDITION (the manager refuses while that node is up; when it is down,
  the attach takes the volume over and fences the old engine). MULTI_NODE_READER_ONLY
  publishes on more nodes read through the same engine; the publications are recorded
  (``publications.Publications``) so that an incompatible repeat is ALREADY_EXISTS and
  the engine is detached only when the last node unpublishes.
- snapshot id = ``VOLUME/SNAPSHOT``; a clone of a volume is the manager's clone without
  a snapshot (it takes one on the source). A VolumeSnapshotClass with ``type: backup``
  and ``backupTarget: NAME`` makes a snapshot a manager backup, id ``backup:NAME:ID``;
  CreateVolume from it restores (``controller_backups.py``).
- Every manager write is asynchronous: the RPC waits for it (``wait_*``) with a deadline;
  when the deadline passes the answer is DEADLINE_EXCEEDED and the CO retries, which
  finds the work done or under way (every RPC is idempotent).

The RPCs live by role: ``controller_volumes.py`` (create, delete, validate, list, get,
capacity, expand), ``controller_publish.py`` (publish, unpublish),
``controller_snapshots.py`` (with ``controller_backups.py``), ``controller_modify.py``
(ControllerModifyVolume: QoS limits); what they share (lookups, locks, publications) in
``controller_base.py``.
"""

from __future__ import annotations

from typing import Any

from cargohold.csi import stubs
from cargohold.csi.controller_base import ControllerBase, condition, zone_of
from cargohold.csi.controller_modify import ModifyRpcs
from cargohold.csi.controller_publish import PublishRpcs
from cargohold.csi.controller_snapshots import SnapshotRpcs
from cargohold.csi.controller_volumes import VolumeRpcs
from cargohold.csi.errors import rpc

pb, pb_grpc = stubs()

__all__ = ["CAPABILITIES", "Controller", "ControllerBase", "condition", "zone_of"]

RPC = pb.ControllerServiceCapability.RPC
CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.PUBLISH_UNPUBLISH_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.CREATE_DELETE_SNAPSHOT,
    RPC.LIST_SNAPSHOTS,
    RPC.CLONE_VOLUME,
    RPC.PUBLISH_READONLY,
    RPC.EXPAND_VOLUME,
    RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.VOLUME_CONDITION,
    RPC.GET_VOLUME,
    RPC.SINGLE_NODE_MULTI_WRITER,
    RPC.MODIFY_VOLUME,  # QoS limits from a VolumeAttributesClass (controller_modify.py)
)


class Controller(VolumeRpcs, PublishRpcs, SnapshotRpcs, ModifyRpcs, pb_grpc.ControllerServicer):  # type: ignore[name-defined]  # generated, loaded at run time (stubs())
    """The CSI Controller service (``server.py`` registers it): the RPCs of its parts."""

    @rpc
    def ControllerGetCapabilities(self, req: Any, context: Any) -> Any:
        caps = [pb.ControllerServiceCapability(rpc=RPC(type=t)) for t in CAPABILITIES]
        return pb.ControllerGetCapabilitiesResponse(capabilities=caps)
