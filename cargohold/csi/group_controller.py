"""The CSI GroupController service: volume group snapshots (CSI 1.12), for the
external-snapshotter's VolumeGroupSnapshot (its ``CSIVolumeGroupSnapshot`` feature gate).

A group snapshot is the manager's ``GroupSnapshot`` (control/group_snapshots.py): the
writes of every volume held at one point, a snapshot of each taken, the writes released —
crash-consistent across the volumes, all or nothing. The group snapshot id is the group's
name (derived from the request's name like a snapshot's); each member's snapshot id is the
usual ``VOLUME/NAME`` (controller_snapshots.py), so CreateVolume restores one like any
snapshot.

Create waits for the group (``timeout``): ready → the group; still being taken → ABORTED
(the sidecar asks again: the same name and volumes answer the same group); failed → INTERNAL
with the reason (nothing of it is left, and the next call takes it afresh). Registered by
csi/server.py with the Controller service.
"""

from __future__ import annotations

import time
from typing import Any

from cargohold.control.client import JSON, ManagerClient
from cargohold.csi import parameters as P
from cargohold.csi import stubs
from cargohold.csi.errors import Code, CsiError, invalid, not_found, rpc
from cargohold.errors import NotFound

pb, pb_grpc = stubs()

IN_FLIGHT = ("holding", "snapshotting", "releasing")


class GroupController(pb_grpc.GroupControllerServicer):  # type: ignore[name-defined]  # generated, loaded at run time (stubs())
    def __init__(self, client: ManagerClient, timeout: float = 120.0) -> None:
        self.client = client
        self.timeout = timeout

    @rpc
    def GroupControllerGetCapabilities(self, req: Any, context: Any) -> Any:
        rpc_type = pb.GroupControllerServiceCapability.RPC.Type
        cap = pb.GroupControllerServiceCapability(
            rpc=pb.GroupControllerServiceCapability.RPC(
                type=rpc_type.CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT
            )
        )
        return pb.GroupControllerGetCapabilitiesResponse(capabilities=[cap])

    @rpc
    def CreateVolumeGroupSnapshot(self, req: Any, context: Any) -> Any:
        name = P.snapshot_name(req.name)
        vids = list(req.source_volume_ids)
        if not vids:
            raise invalid("source_volume_ids is required (the volumes of the group)")
        if len(set(vids)) != len(vids):
            raise invalid("source_volume_ids names a volume twice")
        for vid in vids:
            if not vid:
                raise invalid("source_volume_ids has an empty volume id")
            if not P.valid_name(vid):
                raise not_found(f"volume {vid!r} does not exist (not a cargohold volume id)")
        try:
            g = self.client.create_group_snapshot(name, vids)
        except NotFound as e:
            raise not_found(str(e)) from None
        deadline = time.monotonic() + self.timeout
        while g["state"] in IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(0.1)
            g = self.client.group_snapshot(name)
        if g["state"] in IN_FLIGHT:
            raise CsiError(Code.ABORTED, f"group snapshot {name} is still being taken; try again")
        if g["state"] == "failed":
            raise CsiError(Code.INTERNAL, f"group snapshot {name} failed: {g.get('error')}")
        if g["state"] == "deleting":
            raise CsiError(Code.ABORTED, f"group snapshot {name} is being deleted; try again")
        return pb.CreateVolumeGroupSnapshotResponse(group_snapshot=self._message(g))

    @rpc
    def DeleteVolumeGroupSnapshot(self, req: Any, context: Any) -> Any:
        if not req.group_snapshot_id:
            raise invalid("group_snapshot_id is required")
        gid = req.group_snapshot_id
        if not P.valid_name(gid):
            return pb.DeleteVolumeGroupSnapshotResponse()  # never one of ours: gone already
        try:
            g = self.client.group_snapshot(gid)
        except NotFound:
            return pb.DeleteVolumeGroupSnapshotResponse()
        self._check_members(g, list(req.snapshot_ids))
        if g["state"] in IN_FLIGHT:
            raise CsiError(Code.ABORTED, f"group snapshot {gid} is still being taken; try again")
        if g["state"] != "deleting":
            try:
                self.client.delete_group_snapshot(gid)
            except NotFound:
                return pb.DeleteVolumeGroupSnapshotResponse()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                self.client.group_snapshot(gid)
            except NotFound:
                return pb.DeleteVolumeGroupSnapshotResponse()
            time.sleep(0.1)
        raise CsiError(Code.ABORTED, f"group snapshot {gid} is still being deleted; try again")

    @rpc
    def GetVolumeGroupSnapshot(self, req: Any, context: Any) -> Any:
        if not req.group_snapshot_id:
            raise invalid("group_snapshot_id is required")
        gid = req.group_snapshot_id
        if not P.valid_name(gid):
            raise not_found(f"group snapshot {gid!r} does not exist (not a cargohold id)")
        try:
            g = self.client.group_snapshot(gid)
        except NotFound:
            raise not_found(f"group snapshot {gid} does not exist") from None
        if g["state"] in ("failed", "deleting"):
            raise not_found(f"group snapshot {gid} is {g['state']}")
        self._check_members(g, list(req.snapshot_ids))
        return pb.GetVolumeGroupSnapshotResponse(group_snapshot=self._message(g))

    # --- helpers ---------------------------------------------------------------------------
    def _check_members(self, g: JSON, asked: list[str]) -> None:
        """The snapshot ids a caller names must be the group's (FAILED_PRECONDITION)."""
        have = {P.snapshot_id(v, g["name"]) for v in g["volumes"]}
        if asked and set(asked) != have:
            raise CsiError(
                Code.FAILED_PRECONDITION,
                f"group snapshot {g['name']} has the snapshots {', '.join(sorted(have))}, "
                f"not {', '.join(sorted(asked))}",
            )

    def _message(self, g: JSON) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        ready = g["state"] == "ready"
        ts = Timestamp()
        ts.FromNanoseconds(int(float(g.get("created_at") or time.time()) * 1e9))
        members = []
        for vid in g["volumes"]:
            try:
                size = int(self.client.volume(vid)["size_bytes"])
            except NotFound:
                size = 0
            members.append(
                pb.Snapshot(
                    size_bytes=size,
                    snapshot_id=P.snapshot_id(vid, g["name"]),
                    source_volume_id=vid,
                    creation_time=ts,
                    ready_to_use=ready,
                    group_snapshot_id=g["name"],
                )
            )
        return pb.VolumeGroupSnapshot(
            group_snapshot_id=g["name"], snapshots=members, creation_time=ts, ready_to_use=ready
        )
