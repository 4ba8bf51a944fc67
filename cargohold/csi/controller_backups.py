"""CSI snapshots that are backups: a VolumeSnapshotClass with ``type: backup`` and
``backupTarget: NAME`` (docs/kubernetes.md, "Backups through VolumeSnapshots").

- CreateSnapshot queues a manager backup of the volume to the target (the manager takes a
  crash-consistent snapshot first) and answers at once: ``ready_to_use`` is false while
  the backup runs, true once it succeeded; the snapshotter calls again until then. The
  backup carries the label ``csi.cargohold.io/snapshot: <name>``, so a repeat of the
  request finds it (idempotent by name). A failed backup is answered INTERNAL with its
  error and its record removed, so the next call starts a new one.
- Snapshot id = ``backup:<target>:<backup id>`` (``parameters.backup_snapshot_id``).
- DeleteSnapshot deletes the backup from its repository (the snapshotter calls it only
  under ``deletionPolicy: Delete``; ``Retain`` keeps the backup).
- CreateVolume with such a snapshot as content source restores the backup into the new
  volume (``source: {"backup": ID}``), at least the backup's size.

Tenants: the driver's manager client authenticates as its tenant; the manager lets it back
up, list, delete and restore only that tenant's volumes and backups.
Called by ``controller_snapshots.py`` and ``controller_volumes.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cargohold.control.client import JSON
from cargohold.csi import parameters as P
from cargohold.csi import stubs
from cargohold.csi.controller_base import ControllerBase
from cargohold.csi.errors import Code, CsiError, not_found
from cargohold.errors import NotFound, WrongState

pb, pb_grpc = stubs()
log = logging.getLogger("cargohold.csi.controller")

SNAPSHOT_LABEL = "csi.cargohold.io/snapshot"  # on a backup: the CSI snapshot's name
_GONE = ("deleting", "deleted")


class BackupSnapshots(ControllerBase):
    """The backup half of the snapshot RPCs (``SnapshotRpcs`` and ``VolumeRpcs`` call it)."""

    def _backup_msg(self, b: JSON) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp()
        ts.FromNanoseconds(int(float(b.get("created") or time.time()) * 1e9))
        return pb.Snapshot(
            size_bytes=int(b.get("size_bytes") or 0),
            snapshot_id=P.backup_snapshot_id(b["target"], b["id"]),
            source_volume_id=b["volume"],
            creation_time=ts,
            ready_to_use=b.get("state") == "succeeded",
        )

    def _backup_named(self, sname: str) -> JSON | None:
        for b in self.client.backups():
            if (b.get("labels") or {}).get(SNAPSHOT_LABEL) == sname and b.get("state") not in (
                _GONE
            ):
                return b
        return None

    def _create_backup_snapshot(self, req: Any, target: str) -> Any:
        sname = P.snapshot_name(req.name)
        vol = self._volume(req.source_volume_id)
        vid = vol["name"]
        with self.locks.hold(vid, "CreateSnapshot"):
            b = self._backup_named(sname)
            if b is not None and (b["volume"] != vid or b["target"] != target):
                raise CsiError(
                    Code.ALREADY_EXISTS,
                    f"snapshot {req.name!r} exists already: backup {b['id']} of volume "
                    f"{b['volume']} to target {b['target']}",
                )
            if b is not None and b.get("state") == "failed":
                why = b.get("error") or "no reason given"
                try:
                    self.client.delete_backup(b["id"])
                except NotFound:
                    pass
                raise CsiError(
                    Code.INTERNAL,
                    f"backup {b['id']} of {vid} to {target} failed: {why} "
                    "(removed; the next CreateSnapshot starts a new backup)",
                )
            if b is None:
                try:
                    op = self.client.create_backup(vid, target, labels={SNAPSHOT_LABEL: sname})
                except NotFound as e:
                    raise CsiError(
                        Code.INVALID_ARGUMENT,
                        f"VolumeSnapshotClass parameter backupTarget={target!r}: {e} "
                        "(an administrator adds targets: cargohold backup-target add)",
                    ) from None
                except WrongState as e:
                    raise CsiError(Code.FAILED_PRECONDITION, f"volume {vid}: {e}") from None
                bid = str((op.get("args") or {}).get("backup") or "")
                log.info("backup %s of %s to %s for snapshot %r", bid, vid, target, req.name)
                b = self.client.backup(bid) if bid else self._backup_named(sname)
                if b is None:
                    raise CsiError(Code.ABORTED, f"backup of {vid} for {req.name!r}: try again")
        return pb.CreateSnapshotResponse(snapshot=self._backup_msg(b))

    def _delete_backup_snapshot(self, sid: str, bid: str) -> Any:
        try:
            b = self.client.backup(bid)
        except NotFound:
            return pb.DeleteSnapshotResponse()
        if b.get("state") in ("pending", "running"):
            raise CsiError(Code.ABORTED, f"snapshot {sid}: backup {bid} is still running")
        try:
            self.client.delete_backup(bid)
        except NotFound:
            pass
        except WrongState as e:
            raise CsiError(Code.ABORTED, f"snapshot {sid}: {e}") from None
        log.info("deleted backup %s (snapshot %s)", bid, sid)
        return pb.DeleteSnapshotResponse()

    def _backup_entries(self, snapshot_id: str, source_volume_id: str) -> list[Any]:
        """The backups ListSnapshots shows (every backup of this tenant, or one)."""
        if snapshot_id:
            parts = P.split_backup_snapshot_id(snapshot_id)
            if parts is None:
                return []
            try:
                found = [self.client.backup(parts[1])]
            except NotFound:
                return []
            if found[0]["target"] != parts[0]:
                return []
        elif source_volume_id:
            if not P.valid_name(source_volume_id):
                return []
            found = self.client.backups(volume=source_volume_id)
        else:
            found = self.client.backups()
        keep = [b for b in found if b.get("state") not in (*_GONE, "failed")]
        return [self._backup_msg(b) for b in sorted(keep, key=lambda b: b["id"])]

    def _backup_source(self, sid: str, bid: str) -> tuple[JSON, int, str]:
        """CreateVolume's content source for a backup's snapshot id: the restore source,
        the smallest size, and how to name it."""
        try:
            b = self.client.backup(bid)
        except NotFound:
            raise not_found(f"snapshot {sid} does not exist (no backup {bid})") from None
        if b.get("state") != "succeeded":
            raise CsiError(
                Code.FAILED_PRECONDITION,
                f"snapshot {sid} is not ready: backup {bid} is {b.get('state')}",
            )
        size = int((b.get("info") or {}).get("size") or b.get("size_bytes") or 0)
        return {"backup": bid}, size, f"snapshot {sid}"
