"""``Service``'s calls on volumes: create (and clone), attach, detach, delete, expand,
scrub, recover an epoch; the views of volumes, their replicas and attachments.
"""

from __future__ import annotations

import logging
from typing import Any

from cargohold.constants import MAX_EPOCH
from cargohold.control import key_generations as gens
from cargohold.control.jobs import JobStore, check_job_labels
from cargohold.control.model import (
    EventKind,
    NodeState,
    OperationKind,
    QosLimits,
    Replica,
    SnapshotState,
    Standby,
    StandbyState,
    Volume,
    VolumeEncryption,
    VolumeSource,
)
from cargohold.control.repository import MAX_RETRIES, TenantChanged, new_id, now, tenant_guard
from cargohold.control.requests import AttachRequest, ExpandRequest, VolumeCreate, VolumeUpdate
from cargohold.control.service_keys import KeyCalls
from cargohold.control.tenancy import (
    check_quota,
    clone_source_allowed,
    only_visible,
    owner_for_create,
    pending_expansions,
    usage,
)
from cargohold.control.views import volume_view
from cargohold.encryption import layout
from cargohold.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    KeyUnavailable,
    NotFound,
    Unschedulable,
    WrongState,
)
from cargohold.qos_limits import describe as describe_qos
from cargohold.qos_limits import merge as merge_qos
from cargohold.security.identity import Identity

log = logging.getLogger("cargohold.manager")


class VolumeCalls(KeyCalls):
    """``who`` on every call: the caller (control/auth.py), whose tenant confines what it
    sees and changes (control/tenancy.py); None: the manager itself, unconfined."""

    async def volume(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        return await self.view(await self._volume(name, who))

    async def volumes(self, who: Identity | None = None) -> list[dict[str, Any]]:
        nodes = {n.name: n for n in await self.repo.nodes()}
        reps: dict[str, list[Replica]] = {}
        for r in await self.repo.replicas():
            reps.setdefault(r.volume, []).append(r)
        vols = only_visible(who, await self.repo.volumes())
        return [volume_view(v, reps.get(v.name, []), nodes) for v in vols]

    async def create_volume(self, req: VolumeCreate, who: Identity | None = None) -> dict[str, Any]:
        count = req.replicas or self.settings.default_replicas
        owner = owner_for_create(who, req.tenant)
        if owner is not None:
            await self.repo.tenant(owner)  # NotFound: the tenant must exist first
        snapshot_name = None
        source, restore = req.source, None
        enc: VolumeEncryption | None = None
        needed: list[int] | None = None  # a clone's: the key generations its blocks need
        size = req.size_bytes
        if (req.key is not None or req.kms_key is not None) and not req.encrypted:
            if source is None:
                raise InvalidArgument("key and kms_key choose the key of an encrypted volume")
        if source is not None and source.backup is not None:  # a restore
            enc = await self._backup_encryption(source.backup, who)
            if enc is None and req.encrypted:
                raise InvalidArgument(
                    f"backup {source.backup} is of a plain volume: its restore cannot be "
                    "encrypted (restore it, then copy it into an encrypted volume)"
                )
            if enc is not None:
                size = layout.logical_size_for(size)
            stored = layout.physical_size(size) if enc is not None else size
            restore = await self._restore_source(source.backup, owner, stored, who)
            source = VolumeSource(backup=restore.id, target=restore.target)
        elif source is not None and source.volume is not None:  # a clone
            src = await self._volume(source.volume, who)
            clone_source_allowed(owner, src)
            enc = src.encryption  # a clone keeps its source's key and id
            if enc is None and req.encrypted:
                raise InvalidArgument(
                    f"volume {src.name} is not encrypted: a clone of it cannot be (its blocks "
                    "are copied as they are)"
                )
            if enc is not None:
                size = layout.logical_size_for(size)
            if src.deleting or src.released:
                raise WrongState(f"source volume {src.name} is being deleted")
            if source.snapshot is not None:
                snap = await self.repo.snapshot(src.name, source.snapshot)
                if snap.state is not SnapshotState.READY:
                    raise WrongState(f"snapshot {snap.name} of {src.name} is {snap.state.value}")
                snapshot_name = snap.name
                needed = snap.key_generations
            elif enc is not None:
                needed = sorted(gens.head(enc))
            if req.size_bytes < src.size_bytes:
                raise InvalidArgument(
                    f"a clone must be at least as large as its source: {req.size_bytes} < "
                    f"{src.size_bytes} bytes"
                )
        elif req.encrypted:  # a new data key, wrapped (KeyUnavailable: nothing stored)
            size = layout.logical_size_for(size)
        await self._name_free(req.name)
        if enc is not None:
            if not enc.wrapped_key:
                raise KeyUnavailable(
                    "the source's data key was destroyed (volume delete --shred): it cannot be "
                    "read, cloned or restored"
                )
            enc = gens.for_copy(enc, needed)
            if req.key is not None or req.kms_key is not None:  # the same key, another KEK
                enc = await self.rewrap(req.name, enc, req.key, req.kms_key)
            enc = enc.model_copy(update={"created": now(), "shredded_at": None})
        elif req.encrypted:
            enc = await self.new_encryption(req.key, req.kms_key)
        stored = layout.physical_size(size) if enc is not None else size
        try:
            reps = await self.repo.plan_replicas(
                req.name,
                stored,
                count,
                zone_spread=req.zone_spread,
                node_tags=req.node_tags,
                disk_tags=req.disk_tags,
                overprovisioning=self.settings.overprovisioning,
                preferred_nodes=req.preferred_nodes,
            )
        except Unschedulable:
            # A concurrent create of this name may have stored its volume and replicas
            # since the check above: its replicas then hold every node the scheduler could
            # use for "another replica of this volume". The name is taken: say that.
            await self._name_free(req.name)
            raise
        t = now()
        vol = Volume(
            name=req.name,
            size_bytes=size,
            replicas_wanted=count,
            zone_spread=req.zone_spread,
            node_tags=req.node_tags,
            disk_tags=req.disk_tags,
            reclaim_policy=req.reclaim_policy,
            stale_replica_timeout=req.stale_replica_timeout,
            source=source,
            created_at=t,
            initialized=source is None,
            tenant=owner,
            labels=req.labels,
            qos=req.qos or QosLimits(),
            encryption=enc,
        )
        await check_job_labels(JobStore(self.repo.store), req.labels, owner)
        await self._admit(vol, reps)
        if restore is not None:  # the volume's engine writes the backup in (docs/backups.md)
            await self._operation(
                OperationKind.RESTORE,
                req.name,
                {"backup": restore.repository_id, "target": restore.target},
            )
        elif source is not None and source.volume is not None:
            if snapshot_name is None:  # clone a volume: through a snapshot taken now
                snapshot_name = f"clone-{req.name}-{new_id('')}"
                await self._snapshot_op(source.volume, snapshot_name, {"clone-for": req.name})
            await self._operation(
                OperationKind.CLONE,
                req.name,
                {"source_volume": source.volume, "snapshot": snapshot_name},
            )
        log.info(
            "volume %s created: %d bytes%s, replicas on %s",
            req.name,
            size,
            f" (encrypted, key {enc.provider}:{enc.key_ref})" if enc else "",
            ", ".join(f"{r.node}/{r.disk}" for r in reps),
        )
        await self.repo.add_event(
            EventKind.VOLUME_CREATED,
            f"created: {size} bytes{' encrypted' if enc else ''}, replicas on "
            + ", ".join(f"{r.node}/{r.disk}" for r in reps),
            volume=req.name,
        )
        self.kick.set()
        return await self.view(vol)

    async def _admit(self, vol: Volume, reps: list[Replica]) -> None:
        """Store a new volume; a tenant's only within its quota, checked on the tenant
        record read first and admitted in one transaction with it (repository.tenant_guard):
        a concurrent admission makes this one read again and check on fresh numbers."""
        if vol.tenant is None:
            await self.repo.create_volume(vol, reps)
            return
        for _ in range(MAX_RETRIES):
            tenant, rev = await self.repo.tenant(vol.tenant)
            used = usage(tenant.name, await self.repo.volumes(), await self.repo.operations())
            check_quota(tenant, used, vol.size_bytes, f"volume {vol.name}")
            try:
                await self.repo.create_volume(vol, reps, tenant_guard(tenant, rev))
                return
            except TenantChanged:
                continue
        raise Busy(f"tenant {vol.tenant}: too many concurrent creates, try again")

    async def _name_free(self, name: str) -> None:
        try:
            await self.repo.volume(name)
        except NotFound:
            return
        raise AlreadyExists(f"volume {name} already exists")

    async def attach(
        self, name: str, req: AttachRequest, who: Identity | None = None
    ) -> dict[str, Any]:
        await self._volume(name, who)
        node = await self.repo.node(req.node)
        if node.state is NodeState.DOWN:
            raise WrongState(f"node {req.node} is down")

        async def change(v: Volume) -> Volume | None:
            if v.released:
                raise WrongState(
                    f"volume {name} was released (deleted with reclaim policy Retain): its data "
                    "is kept but it cannot be attached; `volume delete --purge` removes it"
                )
            if v.deleting:
                raise WrongState(f"volume {name} is being deleted")
            if not v.initialized:
                what = "restored" if v.source and v.source.backup else "cloned"
                raise WrongState(
                    f"volume {name} is still being {what} ({v.state.value}); try again when "
                    "it is ready"
                )
            if v.standby is not None and v.standby.state is not StandbyState.ACTIVE:
                standby_attachable(name, v.standby, req.read_only)
            if v.attach_node is not None and v.attach_read_only != req.read_only:
                was = "read-only" if v.attach_read_only else "read-write"
                raise WrongState(
                    f"volume {name} is attached {was} to node {v.attach_node}; detach it first"
                )
            if v.attach_node == req.node:
                return None
            if v.attach_node is not None and not req.force:
                holder = await self.repo.node(v.attach_node)
                if holder.state is not NodeState.DOWN:
                    raise WrongState(
                        f"volume {name} is attached to node {v.attach_node}; detach it first "
                        "(or force a takeover)"
                    )
                log.info(
                    "volume %s: node %s is down, taking over on %s", name, v.attach_node, req.node
                )
            v.attach_node = req.node
            v.attach_read_only = req.read_only
            changed.append(v.attach_node)
            return v

        changed: list[str] = []
        vol = await self.repo.update_volume(name, change)
        if changed:
            await self.repo.add_event(
                EventKind.VOLUME_ATTACHED,
                f"attach to node {req.node} asked"
                + (" read-only" if req.read_only else "")
                + (" (forced takeover)" if req.force else ""),
                volume=name,
                node=req.node,
            )
        self.kick.set()
        return await self.view(vol)

    async def detach(
        self, name: str, who: Identity | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Detach: refused (Busy) while the engine reports NBD clients connected (a mounted
        filesystem would lose its device), unless ``force``."""
        await self._volume(name, who)

        def change(v: Volume) -> Volume | None:
            if v.attach_node is None:
                return None
            st = v.engine_status
            if not force and st is not None and v.engine_runs and st.nbd_clients:
                raise Busy(
                    f"volume {name} has {len(st.nbd_clients)} NBD client(s) connected on node "
                    f"{st.node} ({', '.join(sorted({c.peer for c in st.nbd_clients}))}): "
                    "unmount it and disconnect them first, or force the detach (their I/O "
                    "will fail)"
                )
            was[:] = [v.attach_node]
            v.attach_node = None
            return v

        was: list[str] = []
        vol = await self.repo.update_volume(name, change)
        if was:
            await self.repo.add_event(
                EventKind.VOLUME_DETACHED, f"detached from node {was[0]}", volume=name, node=was[0]
            )
        self.kick.set()
        return await self.view(vol)

    async def delete_volume(
        self, name: str, purge: bool = False, who: Identity | None = None, shred: bool = False
    ) -> dict[str, Any]:
        """Delete (or release, with reclaim policy Retain). ``shred``: destroy the data key
        of an encrypted volume first (its record stored before anything else), then delete
        it as with ``purge``: nothing of it can be read again (docs/keys.md)."""
        await self._volume(name, who)
        if shred:
            await self.shred(name)
            purge = True

        def change(v: Volume) -> Volume | None:
            if v.attach_node is not None:
                raise WrongState(
                    f"volume {name} is attached to node {v.attach_node}; detach it first"
                )
            if v.reclaim_policy == "Retain" and not purge:
                if v.released:
                    return None
                v.released = True  # data kept; `delete --purge` removes it
                return v
            if v.deleting:
                return None
            v.deleting = True
            v.released = False  # a purge of a released volume: now it goes
            return v

        vol = await self.repo.update_volume(name, change)
        self.kick.set()
        return await self.view(vol)

    async def expand(
        self, name: str, req: ExpandRequest, who: Identity | None = None
    ) -> dict[str, Any]:
        vol = await self._volume(name, who)
        if req.size_bytes % 4096:
            raise InvalidArgument(f"size_bytes must be a multiple of 4096, got {req.size_bytes}")
        if req.size_bytes < vol.size_bytes:
            raise InvalidArgument(
                f"volumes only grow: {req.size_bytes} < {vol.size_bytes} bytes (the current size)"
            )
        self._usable(vol)
        args = {"size_bytes": req.size_bytes}
        if vol.encryption is not None:  # whole groups: the replicas grow by ciphertext + tags
            logical = layout.logical_size_for(req.size_bytes)
            args = {"size_bytes": layout.physical_size(logical), "logical_size_bytes": logical}
        if vol.tenant is None:
            op = await self._operation(OperationKind.EXPAND, name, args)
            return op.model_dump()
        for _ in range(MAX_RETRIES):  # within the tenant's quota, admitted as in ``_admit``
            tenant, rev = await self.repo.tenant(vol.tenant)
            ops = await self.repo.operations()
            now_size = max(vol.size_bytes, pending_expansions(ops).get(name, 0))
            used = usage(tenant.name, await self.repo.volumes(), ops)
            grow = args.get("logical_size_bytes", req.size_bytes) - now_size
            check_quota(tenant, used, grow, f"expanding volume {name}")
            try:
                op = await self._operation(
                    OperationKind.EXPAND, name, args, guard=tenant_guard(tenant, rev)
                )
                return op.model_dump()
            except TenantChanged:
                continue
        raise Busy(f"tenant {vol.tenant}: too many concurrent changes, try again")

    async def update_volume(
        self, name: str, req: VolumeUpdate, who: Identity | None = None
    ) -> dict[str, Any]:
        """Change a volume in use: its QoS limits (a merge: limits left out stay, null
        removes one). The engine, if it runs, gets them with its node's next assignments
        (the held heartbeat is answered at once): within a second. Idempotent."""
        vol = await self._volume(name, who)
        if vol.deleting:
            raise WrongState(f"volume {name} is being deleted")
        if req.qos is None:
            return await self.view(vol)
        change_qos = req.qos.model_dump(exclude_unset=True)

        def change(v: Volume) -> Volume | None:
            new = QosLimits(**merge_qos(v.qos.limits(), change_qos))
            if new == v.qos:
                return None
            v.qos = new
            return v

        vol = await self.repo.update_volume(name, change)
        log.info("volume %s: QoS limits now %s", name, describe_qos(vol.qos.limits()))
        return await self.view(vol)

    async def scrub(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """A scrub pass of every replica, run by the volume's engine (it must be attached):
        the operation's result is the pass's report (found, repaired, the bad blocks)."""
        vol = await self._volume(name, who)
        self._usable(vol)
        if vol.attach_node is None:
            raise WrongState(f"volume {name} is detached: a scrub runs in its engine; attach it")
        op = await self._operation(OperationKind.SCRUB, name, {})
        return op.model_dump()

    async def recover_epoch(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """A volume fenced by a bogus epoch (a replica accepted an epoch the manager never
        issued: an older version without the bound, or a hostile client): raise the volume's
        epoch above the highest its replicas report, so that the next engine (allowed to
        jump epochs, ``EngineSpec.epoch_jump``) opens them all. A replica whose node has not
        reported yet is not counted: run it again once every node is up."""
        vol = await self._volume(name, who)
        if vol.deleting:
            raise WrongState(f"volume {name} is being deleted")
        reps = [r for r in await self.repo.replicas(name) if not r.deleting]
        top = max((r.epoch for r in reps), default=0)
        if top >= MAX_EPOCH - 1:
            raise WrongState(
                f"volume {name}: a replica holds epoch {top}, the largest there is; "
                "no engine can open it: recreate that replica"
            )

        def change(v: Volume) -> Volume | None:
            if top <= v.epoch:  # not fenced by a replica: nothing to do (no engine restart)
                if v.error.startswith("fenced by epoch "):
                    v.error = ""
                    return v
                return None
            if v.engine is not None:  # restart the engine (fenced, crash-looping) at top + 1
                v.engine = None
            v.epoch = top
            v.recovered_epoch = top + 1  # the next engine's epoch
            if v.error.startswith("fenced by epoch "):
                v.error = ""
            return v

        before = vol.epoch
        vol = await self.repo.update_volume(name, change)
        if vol.epoch == before:
            return await self.view(vol)
        log.warning(
            "volume %s: epoch raised to %d (the highest its replicas reported: %d); the next "
            "engine starts at %d",
            name,
            vol.epoch,
            top,
            vol.epoch + 1,
        )
        self.kick.set()
        return await self.view(vol)

    async def replicas(
        self, volume: str | None, who: Identity | None = None
    ) -> list[dict[str, Any]]:
        if volume is not None:
            reps: list[dict[str, Any]] = (await self.volume(volume, who))["replicas"]
            return reps
        out = []
        for v in await self.volumes(who):
            out.extend(v["replicas"])
        return out

    async def attachments(self, who: Identity | None = None) -> list[dict[str, Any]]:
        return [
            {
                "volume": v["name"],
                "node": v["attached_node"],
                "endpoint": v["endpoint"],
                "epoch": v["epoch"],
                "state": v["state"],
            }
            for v in await self.volumes(who)
            if v["attached_node"] is not None
        ]


def standby_attachable(name: str, sb: Standby, read_only: bool) -> None:
    """A standby before activation is attached read-only or not at all, and only while it
    holds its last complete backup and nothing else (no apply, seal or revert running, not
    dirty): what it serves is that backup, never a half-applied one. While it is attached the
    follower starts no apply (standby_follower.py); it catches up once it is detached."""
    if not read_only:
        raise WrongState(
            f"volume {name} is a standby ({sb.state.value}): activate it first "
            f"(`cargohold volume activate {name}`), or attach it read-only to inspect it "
            "(docs/disaster-recovery.md)"
        )
    if sb.state is StandbyState.ACTIVATING:
        raise WrongState(f"volume {name} is being activated; try again when it is active")
    if not sb.applied:
        raise WrongState(f"standby {name} holds no complete backup yet; try again later")
    if sb.phase or sb.dirty:
        raise WrongState(
            f"standby {name} is applying backup {sb.applying or '(a revert)'}; try again in a "
            "moment (a read-only attach shows only a complete backup)"
        )
