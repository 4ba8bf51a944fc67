"""``Service``'s calls on standby volumes (docs/disaster-recovery.md): create one from a
target another cluster backs up into, and activate it. What a standby does between the two is
the follower's (standby_follower.py, deciding with standby.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cargohold.control.backup_repos import BackupRepository
from cargohold.control.model import (
    OperationKind,
    Standby,
    StandbyState,
    Volume,
    VolumeSource,
)
from cargohold.control.repository import now
from cargohold.control.requests import StandbyCreate, VolumeCreate
from cargohold.control.service_backups import BackupCalls, volume_uid
from cargohold.control.service_keys import ENCRYPTION_LABEL, encryption_of_label
from cargohold.control.service_volumes import VolumeCalls
from cargohold.control.standby import activatable, source_backups
from cargohold.encryption import layout
from cargohold.errors import CargoholdError, InvalidArgument, NotFound, WrongState
from cargohold.security.identity import Identity

log = logging.getLogger("cargohold.manager")


class StandbyCalls(VolumeCalls, BackupCalls):
    async def create_standby(
        self, req: StandbyCreate, who: Identity | None = None
    ) -> dict[str, Any]:
        """A new volume restoring the source's newest backup in the target, then following
        it (its record's ``standby``)."""
        await self._name_free(req.name)
        target = await self.repo.backup_target(req.target)
        repo = await self._open(target)
        infos = [i.to_dict() for i in await asyncio.to_thread(repo.backups)]
        probe = Standby(
            target=req.target,
            source_volume=req.source_volume,
            source_volume_id=req.source_volume_id,
        )
        mine = source_backups(infos, probe)
        if not mine:
            raise NotFound(
                f"backup target {req.target} holds no backup of a volume {req.source_volume}"
                + (f" (uid {req.source_volume_id})" if req.source_volume_id else "")
            )
        newest = mine[-1]
        labels = next((i.get("labels") or {} for i in infos if i.get("id") == newest.id), {})
        # an encrypted source's backups hold ciphertext (physical blocks) and its key record
        # (ENCRYPTION_LABEL): the restore below copies the record, every generation, into the
        # standby's (docs/disaster-recovery.md, "Encrypted volumes"); sizes here are logical
        encrypted = ENCRYPTION_LABEL in labels
        if encrypted:  # this cluster must hold the KEK: unwrap every generation once now
            await self.unwrap_all(req.name, encryption_of_label(str(labels[ENCRYPTION_LABEL])))
        size = req.size_bytes or (layout.logical_size(newest.size) if encrypted else newest.size)
        stored = layout.physical_size(layout.logical_size_for(size)) if encrypted else size
        if stored < newest.size:
            raise InvalidArgument(
                f"a standby must be at least as large as its source's backups: "
                f"{size} bytes ({stored} stored) < {newest.size} bytes"
            )
        await self._sync(target, repo)  # the newest backup gets its record here
        rec = next(
            (
                b
                for b in await self.repo.backups()
                if b.target == req.target and b.repository_id == newest.id
            ),
            None,
        )
        if rec is None:
            raise NotFound(f"backup {newest.id} of target {req.target} was not imported")
        await self.create_volume(
            VolumeCreate(
                name=req.name,
                size_bytes=size,
                replicas=req.replicas,
                node_tags=req.node_tags,
                disk_tags=req.disk_tags,
                source=VolumeSource(backup=rec.id),
                labels=req.labels,
            ),
            who,
        )
        op = next(
            o for o in await self.repo.operations(req.name) if o.kind is OperationKind.RESTORE
        )
        t = now()
        sb = Standby(
            target=req.target,
            source_volume=req.source_volume,
            source_volume_id=newest.volume_id,
            state=StandbyState.APPLYING,
            applying=newest.id,
            applying_created=newest.created,
            phase="restore",
            operation=op.id,
            dirty=True,
            newest=newest.id,
            newest_created=newest.created,
            behind=len(mine),
            last_poll=t,
        )

        def standby(v: Volume) -> Volume:
            v.standby = sb
            return v

        vol = await self.repo.update_volume(req.name, standby)
        await self._pin_now(repo, vol, [newest.id])
        log.info(
            "standby %s created: follows volume %s in target %s from backup %s",
            req.name,
            req.source_volume,
            req.target,
            newest.id,
        )
        self.kick.set()
        return await self.view(vol)

    async def _pin_now(self, repo: BackupRepository, vol: Volume, backups: list[str]) -> None:
        try:
            holder = volume_uid(self.repo.cluster_id, vol)
            await asyncio.to_thread(repo.pin, holder, backups, self.settings.standby_pin_ttl)
        except CargoholdError as e:  # the follower pins again at its next poll
            log.warning("standby %s: pin failed: %s", vol.name, e)

    async def activate(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """Ask the standby to become a normal volume: it stops following; what runs ends
        (an apply running completes and is sealed, a failed or torn one is reverted to the
        last complete state); then the volume is ``active``: attachable read-write."""
        vol = await self._volume(name, who)
        if vol.standby is None:
            raise WrongState(f"volume {name} is not a standby volume")
        if vol.standby.state in (StandbyState.ACTIVE, StandbyState.ACTIVATING):
            return await self.view(vol)  # idempotent
        why = activatable(vol.standby)
        if why:
            raise WrongState(f"standby {name} cannot be activated: {why}")

        def activating(v: Volume) -> Volume:
            if v.standby is not None and v.standby.state in (
                StandbyState.FOLLOWING,
                StandbyState.APPLYING,
            ):
                v.standby.state = StandbyState.ACTIVATING
            return v

        vol = await self.repo.update_volume(name, activating)
        log.info("standby %s: activation asked", name)
        self.kick.set()
        return await self.view(vol)
