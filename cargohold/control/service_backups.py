"""``Service``'s calls on backup targets and backups (docs/backups.md).

- Targets are the admin's: added with their credentials and repository key (checked: the
  manager opens the repository there, or makes one), listed without secrets, synced
  (backups in the repository's catalog the manager does not know become records: a new
  cluster sees an old one's backups), garbage-collected, deleted (the records only: the
  repository keeps its data).
- A backup is a BACKUP operation on the volume's engine, from a snapshot (taken now unless
  one is named), incremental to the newest succeeded backup of the same volume on the same
  target (``choose_parent``). Its record follows the operation (backup_results.py) and
  outlives the volume.
- A restore is a new volume whose source is a backup (service_volumes.py calls
  ``_restore_source``); its engine runs a RESTORE operation, and the volume is
  ``restoring`` until it succeeded.

Tenants: a backup is its volume's tenant's; a tenant sees and deletes only its own and
restores only into itself. Targets are shared: a tenant names one but cannot list them.
The manager's own calls on a repository (check, sync, delete, GC) run in threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from cargohold.control.backup_records import Backup, BackupState, BackupTarget, TargetSecrets
from cargohold.control.backup_repos import BackupRepository, Opener, open_repository
from cargohold.control.backup_results import backup_size
from cargohold.control.model import (
    BACKUP_ID_PATTERN,
    Operation,
    OperationKind,
    SnapshotState,
    Volume,
    VolumeEncryption,
    keys,
)
from cargohold.control.repository import new_id, now
from cargohold.control.requests import BackupCreate, BackupTargetCreate
from cargohold.control.service_base import ServiceBase
from cargohold.control.service_keys import (
    ENCRYPTION_LABEL,
    SHREDDED,
    encryption_label,
    encryption_of_label,
)
from cargohold.control.state.base import Put
from cargohold.errors import AlreadyExists, InvalidArgument, KeyUnavailable, NotFound, WrongState
from cargohold.security.identity import Identity
from cargohold.security.policy import sees

log = logging.getLogger("cargohold.manager")

BACKUP_SNAPSHOT_LABEL = "cargohold.io/backup"  # on the snapshots the manager takes for backups
# the engine's labels on a backup in the repository (engine/backup.py): the manager's id of
# it, and the replica history it was read at; not the user's labels
RECORD_LABEL = "cargohold.io/record"
ENGINE_LABELS = (RECORD_LABEL, "cargohold.io/history", ENCRYPTION_LABEL)
UNFINISHED = (BackupState.PENDING, BackupState.RUNNING, BackupState.DELETING)


def volume_uid(cluster_id: str, vol: Volume) -> str:
    """A volume's identity across its life: its name may be reused by a later volume, whose
    blocks have nothing to do with this one's backups (an incremental backup needs the same
    volume as its parent)."""
    raw = f"{cluster_id}/{vol.name}/{vol.created_at!r}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def backup_id(volume: str, t: float) -> str:
    """bk-<volume>-<yyyymmddhhmmss>-<4 hex> (UTC)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t))
    return f"bk-{volume}-{stamp}-{secrets.token_hex(2)}"


def choose_parent(backups: Iterable[Backup], volume_id: str, target: str) -> Backup | None:
    """The backup a new one of volume ``volume_id`` on ``target`` is incremental to: the
    newest that succeeded, of the same volume (not a volume that reused its name), on the
    same target, with a repository id and a generation. None: a full backup."""
    best = None
    for b in backups:
        if (
            b.state is not BackupState.SUCCEEDED
            or b.target != target
            or b.volume_id != volume_id
            or not b.repository_id
            or not isinstance(b.info.get("generation"), int)
        ):
            continue
        if best is None or (b.created, b.id) > (best.created, best.id):
            best = b
    return best


def backup_visible(who: Identity | None, b: Backup) -> bool:
    return who is None or sees(who, b.tenant)


def imported_id(info: dict[str, Any]) -> str:
    """The manager's id for a backup found in a catalog: the id the cluster that made it
    gave it (the engine labels it so), else one derived from it, stable, so a second sync
    (or another manager's) names it the same."""
    named = (info.get("labels") or {}).get(RECORD_LABEL)
    if isinstance(named, str) and re.match(BACKUP_ID_PATTERN, named):
        return named
    created = info.get("created")
    t = float(created) if isinstance(created, int | float) else 0.0
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t))
    tag = hashlib.blake2b(str(info.get("id")).encode(), digest_size=2).hexdigest()
    volume = str(info.get("volume") or "volume")[:63].strip("-.") or "volume"
    return f"bk-{volume}-{stamp}-{tag}"


class BackupCalls(ServiceBase):
    """``who``: the caller; None: the manager itself (recurring jobs)."""

    # how the manager opens a target's repository (blocking; tests put a twin here)
    open_backup_repository: ClassVar[Opener] = staticmethod(open_repository)

    async def _open(self, target: BackupTarget, create: bool = False) -> BackupRepository:
        sec = await self.repo.target_secrets(target.name)
        return await asyncio.to_thread(type(self).open_backup_repository, target, sec, create)

    # --- targets --------------------------------------------------------------------------
    async def backup_targets(self, who: Identity | None = None) -> list[dict[str, Any]]:
        return [t.model_dump() for t in await self.repo.backup_targets()]

    async def backup_target(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        return (await self.repo.backup_target(name)).model_dump()

    async def create_backup_target(
        self, req: BackupTargetCreate, who: Identity | None = None
    ) -> dict[str, Any]:
        """Check the target (open its repository with the key, or make one there), keep it
        and its secrets, import the backups its catalog lists."""
        try:
            await self.repo.backup_target(req.name)
            raise AlreadyExists(f"backup target {req.name} already exists")
        except NotFound:
            pass
        target = BackupTarget(
            name=req.name,
            url=req.url,
            endpoint=req.endpoint,
            region=req.region,
            ca_bundle=req.ca_bundle,
            created_at=now(),
            has_credentials=bool(req.access_key.get_secret_value()),
        )
        sec = TargetSecrets(
            name=req.name,
            access_key=req.access_key,
            secret_key=req.secret_key,
            repository_key=req.repository_key,
        )
        repo = await asyncio.to_thread(type(self).open_backup_repository, target, sec, True)
        await self.repo.create_backup_target(target, sec)
        log.info("backup target %s added: %s", target.name, target.url)
        await self._sync(target, repo)
        return (await self.repo.backup_target(req.name)).model_dump()

    async def delete_backup_target(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """Forget the target, its secrets and its backups' records; the repository keeps
        every backup (add the target again to see them). Refused while a backup or a
        restore uses it."""
        target = await self.repo.backup_target(name)
        mine = [b for b in await self.repo.backups() if b.target == name]
        busy = [b.id for b in mine if b.state in UNFINISHED]
        if busy:
            raise WrongState(f"backup target {name} is in use by backups {', '.join(busy[:5])}")
        restoring = [
            v.name
            for v in await self.repo.volumes()
            if not v.initialized and v.source is not None and v.source.target == name
        ]
        if restoring:
            raise WrongState(f"backup target {name} is in use by restores into {restoring[0]}")
        following = [
            v.name
            for v in await self.repo.volumes()
            if v.standby is not None and v.standby.target == name and v.standby.state != "active"
        ]
        if following:  # docs/disaster-recovery.md
            raise WrongState(f"backup target {name} is followed by standby {following[0]}")
        await self.repo.delete_backup_target(name, [b.id for b in mine])
        log.info("backup target %s removed (%d backup records forgotten)", name, len(mine))
        return target.model_dump()

    async def sync_backup_target(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """Import the backups the repository's catalog lists that have no record here."""
        target = await self.repo.backup_target(name)
        return await self._sync(target, await self._open(target))

    async def _sync(self, target: BackupTarget, repo: BackupRepository) -> dict[str, Any]:
        infos = [i.to_dict() for i in await asyncio.to_thread(repo.backups)]
        records = {b.id: b for b in await self.repo.backups()}
        known = {b.repository_id: b for b in records.values() if b.target == target.name}
        vols = {v.name: v for v in await self.repo.volumes()}
        imported = []
        for info in infos:
            rid = str(info.get("id", ""))
            if not rid or rid in known:
                continue
            named = (info.get("labels") or {}).get(RECORD_LABEL)
            if isinstance(named, str) and named in records:
                continue  # this manager's own, its result not recorded yet: the engine's
            rec = _imported(info, target.name, vols, self.repo.cluster_id)
            try:
                await self.repo.create_backup(rec)
            except AlreadyExists:
                continue
            imported.append(rec.id)
        in_catalog = {str(i.get("id", "")) for i in infos}
        missing = [
            b.id
            for rid, b in known.items()
            if rid and b.state is BackupState.SUCCEEDED and rid not in in_catalog
        ]
        t = now()

        def synced(x: BackupTarget) -> BackupTarget:
            x.last_sync, x.error = t, ""
            return x

        await self.repo.update_backup_target(target.name, synced)
        if imported:
            log.info("backup target %s: %d backups imported", target.name, len(imported))
        return {
            "target": target.name,
            "backups": len(infos),
            "imported": imported,
            "missing": missing,  # records whose backup the catalog no longer lists (kept)
        }

    async def gc_backup_target(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """Mark and sweep the repository (it honours running backups' leases)."""
        repo = await self._open(await self.repo.backup_target(name))
        result = await asyncio.to_thread(repo.gc)
        counts = {str(k): int(v) for k, v in dict(result).items() if isinstance(v, int | float)}
        return {"target": name, "counts": counts}

    async def export_backup_key(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """The target's repository key (base64): the one answer that carries a secret, for
        the admin to keep a copy (losing it loses the backups). Logged, without the key."""
        sec = await self.repo.target_secrets((await self.repo.backup_target(name)).name)
        log.warning("the repository key of backup target %s was exported by %s", name, who)
        return {"target": name, "repository_key": sec.repository_key.get_secret_value()}

    # --- backups --------------------------------------------------------------------------
    async def backups(
        self, who: Identity | None = None, volume: str | None = None, target: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            b.model_dump()
            for b in await self.repo.backups()
            if backup_visible(who, b)
            and (volume is None or b.volume == volume)
            and (target is None or b.target == target)
        ]

    async def _backup_encryption(self, bid: str, who: Identity | None) -> VolumeEncryption | None:
        """The key record a restore of backup ``bid`` needs (None: a plain volume's): its
        ENCRYPTION_LABEL in the repository (any cluster's), else its volume's record here.
        KeyUnavailable when that key was destroyed (``volume delete --shred``)."""
        b = await self._backup(bid, who)
        label = (b.info.get("labels") or {}).get(ENCRYPTION_LABEL)
        if label is not None:
            enc: VolumeEncryption | None = encryption_of_label(str(label))
        else:
            try:
                vol = await self.repo.volume(b.volume)
            except NotFound:
                return None
            same = volume_uid(self.repo.cluster_id, vol) == b.volume_id
            enc = vol.encryption if same else None
        if enc is None:
            return None
        gone = await self.repo.store.get(SHREDDED + enc.id)
        if gone is not None or not enc.wrapped_key:
            raise KeyUnavailable(
                f"backup {bid} cannot be restored: the data key of volume {b.volume} was "
                "destroyed (volume delete --shred); its backups are unreadable by design"
            )
        return enc

    async def _backup(self, bid: str, who: Identity | None) -> Backup:
        b = await self.repo.backup(bid)
        if not backup_visible(who, b):
            raise NotFound(f"backup {bid} not found")
        return b

    async def backup(self, bid: str, who: Identity | None = None) -> dict[str, Any]:
        return (await self._backup(bid, who)).model_dump()

    async def create_backup(
        self, volume: str, req: BackupCreate, who: Identity | None = None
    ) -> dict[str, Any]:
        """Queue a backup of ``volume`` to ``req.target``: -> the BACKUP operation."""
        vol = await self._volume(volume, who)
        self._usable(vol)
        await self.repo.backup_target(req.target)  # NotFound
        await self.repo.target_secrets(req.target)
        t = now()
        bid = backup_id(volume, t)
        also: list[Put] = []
        if req.snapshot is not None:
            snap = await self.repo.snapshot(volume, req.snapshot)
            if snap.state is not SnapshotState.READY:
                raise WrongState(f"snapshot {snap.name} of {volume} is {snap.state.value}")
            snapshot = snap.name
        else:  # crash-consistent: the ordinary snapshot operation, first
            snapshot = f"backup-{bid[len('bk-') + len(volume) + 1 :]}"
            labels = {BACKUP_SNAPSHOT_LABEL: bid}
            await self._snapshot_op(volume, snapshot, labels)
        uid = volume_uid(self.repo.cluster_id, vol)
        parent = choose_parent(await self.repo.backups(), uid, req.target)
        args: dict[str, Any] = {
            "backup": bid,
            "target": req.target,
            "snapshot": snapshot,
            "volume_id": uid,
            "parent": parent.repository_id if parent else None,
            "parent_generation": parent.info["generation"] if parent else None,
            "labels": dict(req.labels),
        }
        if vol.encryption is not None:  # the wrapped key travels with the backup (DR)
            args["labels"][ENCRYPTION_LABEL] = encryption_label(vol.encryption)
        op = Operation(
            id=new_id("op-"), kind=OperationKind.BACKUP, volume=volume, args=args, created_at=t
        )
        rec = Backup(
            id=bid,
            volume=volume,
            volume_id=uid,
            target=req.target,
            snapshot=snapshot,
            parent=args["parent"],
            size_bytes=vol.size_bytes,
            labels=dict(req.labels),
            operation=op.id,
            created=t,
            tenant=vol.tenant,
        )
        also.append(Put(keys.backup(bid), rec.model_dump_json().encode()))
        await self.repo.create_operation(op, also=also)
        self.kick.set()
        log.info(
            "backup %s of %s to %s queued (%s)",
            bid,
            volume,
            req.target,
            f"incremental to {parent.id}" if parent else "full",
        )
        return op.model_dump()

    async def delete_backup(self, bid: str, who: Identity | None = None) -> dict[str, Any]:
        """Delete the backup from its repository, then its record. A backup that never
        succeeded has nothing in the catalog: only its record goes."""
        b = await self._backup(bid, who)
        if b.state in (BackupState.PENDING, BackupState.RUNNING):
            raise WrongState(f"backup {bid} is {b.state.value}: wait for it to end")
        before = b.state

        def deleting(x: Backup) -> Backup:
            if x.state is BackupState.DELETING:
                raise WrongState(f"backup {bid} is being deleted")
            x.state, x.error = BackupState.DELETING, ""
            return x

        b = await self.repo.update_backup(bid, deleting)
        if b.repository_id:
            try:
                repo = await self._open(await self.repo.backup_target(b.target))
                try:
                    await asyncio.to_thread(repo.delete, b.repository_id)
                except NotFound:
                    pass  # the catalog no longer lists it: gone already
            except Exception as e:
                await self._restore_state(bid, before, f"delete failed: {e}")
                if isinstance(e, NotFound):  # its target was removed meanwhile
                    raise WrongState(f"backup {bid}: {e}") from None
                raise
        await self.repo.delete_backup_record(bid)
        log.info("backup %s of %s deleted from %s", bid, b.volume, b.target)
        return {**b.model_dump(), "state": "deleted"}

    async def _restore_state(self, bid: str, state: BackupState, error: str) -> None:
        def back(x: Backup) -> Backup:
            x.state, x.error = state, error
            return x

        await self.repo.update_backup(bid, back)

    async def _restore_source(
        self, bid: str, owner: str | None, size: int, who: Identity | None
    ) -> Backup:
        """The backup a new volume restores, checked: visible to ``who``, succeeded, of the
        new volume's tenant, not larger than the new volume, its target known."""
        b = await self._backup(bid, who)
        if b.state is not BackupState.SUCCEEDED or not b.repository_id:
            raise WrongState(f"backup {bid} is {b.state.value}: only a succeeded one restores")
        if b.tenant is not None and b.tenant != owner:
            raise InvalidArgument(
                f"backup {bid} belongs to another tenant: a restore stays in its tenant"
            )
        need = int(b.info.get("size") or b.size_bytes)
        if size < need:
            raise InvalidArgument(
                f"a restore must be at least as large as its backup: {size} < {need} bytes"
            )
        await self.repo.backup_target(b.target)  # NotFound: the target was removed
        return b


def _imported(info: dict[str, Any], target: str, vols: dict[str, Volume], cluster: str) -> Backup:
    """The record of a backup found in ``target``'s catalog. Its tenant: the tenant of this
    cluster's volume of the same uid (a sync of our own backups), else nobody's (the
    admin's: a backup of another cluster restores only through the admin)."""
    volume = str(info.get("volume", ""))
    vol = vols.get(volume)
    tenant = None
    if vol is not None and volume_uid(cluster, vol) == info.get("volume_id"):
        tenant = vol.tenant
    created = info.get("created")
    return Backup(
        id=imported_id(info),
        repository_id=str(info["id"]),
        volume=volume,
        volume_id=str(info.get("volume_id", "")),
        target=target,
        snapshot=str(info.get("snapshot", "")),
        parent=info.get("parent") if isinstance(info.get("parent"), str) else None,
        state=BackupState.SUCCEEDED,
        progress=1.0,
        size_bytes=backup_size(info, 0),
        labels={
            str(k): str(v)
            for k, v in dict(info.get("labels") or {}).items()
            if k not in ENGINE_LABELS
        },
        info=info,
        created=float(created) if isinstance(created, int | float) else 0.0,
        finished=float(created) if isinstance(created, int | float) else None,
        tenant=tenant,
        imported=True,
    )
