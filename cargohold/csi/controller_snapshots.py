"""The snapshot RPCs of the CSI Controller service: create, delete, list.

Snapshot id = ``VOLUME/SNAPSHOT``; snapshot names are unique across volumes (a name taken
by another volume's snapshot is ALREADY_EXISTS); a pending snapshot is waited for through
the manager's operation that takes it. A VolumeSnapshotClass with ``type: backup`` makes
the snapshot a backup instead (``controller_backups.py``; id ``backup:TARGET:ID``).
"""

from __future__ import annotations

import time
from typing import Any

from cargohold.control.client import JSON
from cargohold.csi import parameters as P
from cargohold.csi import stubs
from cargohold.csi.controller_backups import BackupSnapshots
from cargohold.csi.controller_base import one_page
from cargohold.csi.errors import Code, CsiError, invalid, rpc
from cargohold.errors import NotFound, WrongState

pb, pb_grpc = stubs()


class SnapshotRpcs(BackupSnapshots):
    """CreateSnapshot, DeleteSnapshot, ListSnapshots (a part of ``Controller``)."""

    def _snapshot_msg(self, vol: JSON, snap: JSON) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp()
        ts.FromNanoseconds(int(float(snap.get("created_at") or time.time()) * 1e9))
        return pb.Snapshot(
            size_bytes=int(vol["size_bytes"]),
            snapshot_id=P.snapshot_id(vol["name"], snap["name"]),
            source_volume_id=vol["name"],
            creation_time=ts,
            ready_to_use=snap.get("state") == "ready",
        )

    @rpc
    def CreateSnapshot(self, req: Any, context: Any) -> Any:
        if not req.source_volume_id:
            raise invalid("source_volume_id is required")
        sname = P.snapshot_name(req.name)
        params = P.SnapshotParameters.parse(dict(req.parameters))
        if params.is_backup:
            return self._create_backup_snapshot(req, params.backup_target)
        vol = self._volume(req.source_volume_id)
        vid = vol["name"]
        with self.locks.hold(vid, "CreateSnapshot"):
            for other in self.client.volumes():
                if other["name"] == vid:
                    continue
                if other.get("state") in ("deleting",):
                    continue
                try:
                    names = {s["name"] for s in self.client.snapshots(other["name"])}
                except NotFound:
                    continue
                if sname in names:
                    raise CsiError(
                        Code.ALREADY_EXISTS,
                        f"snapshot {req.name!r} exists already, of volume {other['name']}",
                    )
            snaps = {s["name"]: s for s in self.client.snapshots(vid)}
            snap = snaps.get(sname)
            if snap is None or snap.get("state") == "error":
                if snap is not None:
                    self._wait_op(self.client.delete_snapshot(vid, sname))
                try:
                    op = self.client.create_snapshot(vid, sname)
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
                self._wait_op(op)
            elif snap.get("state") == "pending":
                self.client.wait_operation(
                    self._pending_op(vid, "snapshot-create", sname), self.timeout
                )
            snap = {s["name"]: s for s in self.client.snapshots(vid)}[sname]
            vol = self.client.volume(vid)
        return pb.CreateSnapshotResponse(snapshot=self._snapshot_msg(vol, snap))

    def _pending_op(self, vid: str, kind: str, sname: str) -> str:
        for op in self.client.operations(vid):
            if op.get("kind") == kind and (op.get("args") or {}).get("name") == sname:
                if op.get("state") in ("pending", "running"):
                    return str(op["id"])
        raise CsiError(Code.ABORTED, f"snapshot {vid}/{sname} is pending; try again")

    @rpc
    def DeleteSnapshot(self, req: Any, context: Any) -> Any:
        if not req.snapshot_id:
            raise invalid("snapshot_id is required")
        backup = P.split_backup_snapshot_id(req.snapshot_id)
        if backup is not None:
            return self._delete_backup_snapshot(req.snapshot_id, backup[1])
        parts = P.split_snapshot_id(req.snapshot_id)
        if parts is None:
            return pb.DeleteSnapshotResponse()
        vid, sname = parts
        with self.locks.hold(vid, "DeleteSnapshot"):
            try:
                snaps = {s["name"]: s for s in self.client.snapshots(vid)}
            except NotFound:
                return pb.DeleteSnapshotResponse()
            snap = snaps.get(sname)
            if snap is None:
                return pb.DeleteSnapshotResponse()
            if snap.get("state") == "pending":
                raise CsiError(Code.ABORTED, f"snapshot {req.snapshot_id} is still being taken")
            if snap.get("state") == "deleting":
                self.client.wait_operation(
                    self._pending_op(vid, "snapshot-delete", sname), self.timeout
                )
            else:
                try:
                    self._wait_op(self.client.delete_snapshot(vid, sname))
                except NotFound:
                    pass
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"{req.snapshot_id}: {e}") from None
        return pb.DeleteSnapshotResponse()

    @rpc
    def ListSnapshots(self, req: Any, context: Any) -> Any:
        pairs: list[tuple[JSON, JSON]] = []
        backups = self._backup_entries(req.snapshot_id, req.source_volume_id)
        if req.snapshot_id:
            parts = P.split_snapshot_id(req.snapshot_id)
            vols = [parts[0]] if parts else []
        elif req.source_volume_id:
            vols = [req.source_volume_id] if P.valid_name(req.source_volume_id) else []
        else:
            vols = [v["name"] for v in self.client.volumes()]
        for vid in sorted(vols):
            try:
                vol = self.client.volume(vid)
                snaps = self.client.snapshots(vid)
            except NotFound:
                continue
            for s in sorted(snaps, key=lambda s: s["name"]):
                if s.get("state") in ("deleting", "error"):
                    continue
                if req.snapshot_id and P.snapshot_id(vid, s["name"]) != req.snapshot_id:
                    continue
                pairs.append((vol, s))
        snaps = [self._snapshot_msg(v, s) for v, s in pairs] + backups
        page, token = one_page(snaps, req.max_entries, req.starting_token)
        entries = [pb.ListSnapshotsResponse.Entry(snapshot=s) for s in page]
        return pb.ListSnapshotsResponse(entries=entries, next_token=token)
