"""What the manager's API does: validate a request against the records, write the wish.

The HTTP layer (``api.py``) only maps JSON to these calls and errors to status codes; the
reconcilers carry wishes out. Long work (snapshots, expand, clone) becomes an ``Operation``
that an engine runs; the caller polls it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, field_validator

from cargohold.constants import MAX_EPOCH
from cargohold.control import heartbeat as hb_mod
from cargohold.control.adoption import AdoptRequest, adopt
from cargohold.control.model import (
    Assignments,
    Disk,
    DiskReport,
    EventKind,
    Heartbeat,
    Node,
    NodeState,
    Operation,
    OperationKind,
    Registration,
    Replica,
    Snapshot,
    SnapshotState,
    Volume,
    VolumeSource,
    check_name,
    keys,
    name_field,
)
from cargohold.control.repository import Repository, new_id, now
from cargohold.control.settings import ManagerSettings
from cargohold.control.state.base import Put
from cargohold.control.views import volume_view
from cargohold.control.watch import AssignmentWatch
from cargohold.errors import (
    AlreadyExists,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
    Unschedulable,
    WrongState,
)

log = logging.getLogger("cargohold.manager")

HEALTH_TIMEOUT = 2.0  # seconds /healthz waits for the state store before it answers 503


class VolumeCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = name_field()
    size_bytes: StrictInt = Field(gt=0, le=256 << 40, multiple_of=4096)
    replicas: StrictInt | None = Field(default=None, ge=1, le=16)
    zone_spread: StrictBool = True
    node_tags: list[str] = Field(default_factory=list)
    disk_tags: list[str] = Field(default_factory=list)
    reclaim_policy: Literal["Delete", "Retain"] = "Delete"
    stale_replica_timeout: StrictFloat = Field(default=30.0, ge=0, le=7 * 86400)
    source: VolumeSource | None = None
    preferred_nodes: list[str] = Field(
        default_factory=list, description="put the first replica on the first of these that fits"
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "volume name") if isinstance(v, str) else v


class DiskCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = name_field()
    path: str = Field(min_length=1)
    capacity_bytes: StrictInt = Field(gt=0)
    tags: list[str] = Field(default_factory=list)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "disk name") if isinstance(v, str) else v


class AttachRequest(BaseModel):
    model_config = {"extra": "forbid"}

    node: str = name_field()
    force: StrictBool = False  # take over from an engine on a node that is still up


class ExpandRequest(BaseModel):
    model_config = {"extra": "forbid"}

    size_bytes: StrictInt = Field(gt=0, le=256 << 40, multiple_of=4096)


class SnapshotCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = name_field()
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "snapshot name") if isinstance(v, str) else v


class Service:
    def __init__(
        self, repo: Repository, settings: ManagerSettings, backend: str, manager_id: str
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.backend = backend
        self.manager_id = manager_id
        self.is_leader = False
        self.kick = asyncio.Event()  # wakes the reconcilers after a write
        self.watch = AssignmentWatch()  # wakes held heartbeats when their node's work changes
        self.reports: dict[str, tuple[str, Heartbeat]] = {}  # node -> (digest, last report)
        repo.observers.append(self.watch.changed)

    # --- nodes ----------------------------------------------------------------------------
    async def register(self, name: str, reg: Registration) -> dict[str, Any]:
        check_name(name, "node name")
        t = now()

        def make(old: Node | None) -> Node:
            base = old or Node(name=name, address=reg.address, registered_at=t)
            return base.model_copy(
                update={
                    "zone": reg.zone,
                    "address": reg.address,
                    "replica_port": reg.replica_port or base.replica_port,
                    "tags": reg.tags,
                    "agent_pid": reg.agent_pid,
                    "heartbeat_at": t,
                    "down_since": None,
                }
            )

        node = await self.repo.upsert_node(name, make)
        for d in reg.disks:
            await self._report_disk(name, d)
        log.info("node %s registered (%s, zone %r)", name, reg.address, reg.zone)
        self.kick.set()
        return node.view()

    async def _report_disk(self, node: str, d: DiskReport) -> None:
        existing = {x.name: x for x in await self.repo.disks(node)}
        old = existing.get(d.name)
        disk = Disk(
            node=node,
            name=d.name,
            path=d.path,
            capacity_bytes=d.capacity_bytes,
            tags=sorted(set(d.tags) | set(old.tags if old else [])),
            schedulable=old.schedulable if old else True,
        )
        if old != disk:
            await self.repo.put_disk(disk)

    async def heartbeat(
        self, name: str, hb: Heartbeat, gone: asyncio.Future[object] | None = None
    ) -> Assignments:
        """Take in the report (liveness is recorded now) and answer the node's assignments:
        at once when they differ from the revision the agent has, else when they change
        (an API write or a reconciler touched them), the agent's ``hold`` (at most
        ``heartbeat_interval``) has passed, or the agent hung up (``gone``). A report sent
        as its digest (``same_report``) stands for the last whole one this manager kept of
        the node; one it does not have is answered ``resend`` at once."""
        if hb.same_report:  # "as last time": the report this manager kept, if it has it
            last = self.reports.get(name)
            if last is None or last[0] != hb.report_digest:
                return Assignments(resend=True, heartbeat_interval=self.settings.heartbeat_every)
            hb = last[1].model_copy(
                update={"hold": hb.hold, "assignments_revision": hb.assignments_revision}
            )
        elif hb.report_digest:
            self.reports[name] = (hb.report_digest, hb)
        mark = self.watch.mark(name)
        a = await hb_mod.handle(self.repo, name, hb, self.settings, self.kick.set)
        hold = min(hb.hold, self.settings.heartbeat_every)
        if hold <= 0 or a.revision != hb.assignments_revision:
            return a
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        while (left := deadline - loop.time()) > 0:
            if not await self.watch.wait(name, mark, left, gone):
                break
            mark = self.watch.mark(name)
            a = await hb_mod.assignments(self.repo, name, hb, self.settings)
            if a.revision != hb.assignments_revision:
                return a
        # nothing new: the agent keeps what it has (no lists to send, parse or check)
        return Assignments(
            revision=a.revision, heartbeat_interval=a.heartbeat_interval, unchanged=True
        )

    async def node(self, name: str) -> dict[str, Any]:
        return (await self.repo.node(name)).view()

    async def nodes(self) -> list[dict[str, Any]]:
        return [n.view() for n in await self.repo.nodes()]

    async def cordon(self, name: str, on: bool) -> dict[str, Any]:
        def change(n: Node) -> Node:
            n.cordoned = on
            if not on:
                n.draining = False
            return n

        node = await self.repo.update_node(name, change)
        if not on:  # uncordon also ends a drain: replicas not yet moved stay
            for rep in await self.repo.replicas():
                if rep.node == name and rep.evicting and not rep.deleting:

                    def stay(r: Replica) -> Replica:
                        r.evicting = False
                        return r

                    await self.repo.update_replica(rep.volume, rep.id, stay)
        self.kick.set()
        return node.view()

    async def drain(self, name: str) -> dict[str, Any]:
        """Cordon, and move every replica off the node (new ones first, then the old go)."""

        def change(n: Node) -> Node:
            n.cordoned = n.draining = True
            return n

        node = await self.repo.update_node(name, change)
        for rep in await self.repo.replicas():
            if rep.node == name and not rep.deleting and not rep.evicting:

                def evict(r: Replica) -> Replica:
                    r.evicting = True
                    return r

                await self.repo.update_replica(rep.volume, rep.id, evict)
        self.kick.set()
        return node.view()

    async def disks(self) -> list[dict[str, Any]]:
        return [d.model_dump() for d in await self.repo.disks()]

    async def add_disk(self, node: str, req: DiskCreate) -> dict[str, Any]:
        await self.repo.node(node)
        disk = Disk(
            node=node,
            name=req.name,
            path=req.path,
            capacity_bytes=req.capacity_bytes,
            tags=req.tags,
        )
        await self.repo.create_disk(disk)
        self.kick.set()
        return disk.model_dump()

    # --- volumes --------------------------------------------------------------------------
    async def view(self, vol: Volume) -> dict[str, Any]:
        nodes = {n.name: n for n in await self.repo.nodes()}
        return volume_view(vol, await self.repo.replicas(vol.name), nodes)

    async def volume(self, name: str) -> dict[str, Any]:
        return await self.view(await self.repo.volume(name))

    async def volumes(self) -> list[dict[str, Any]]:
        nodes = {n.name: n for n in await self.repo.nodes()}
        reps: dict[str, list[Replica]] = {}
        for r in await self.repo.replicas():
            reps.setdefault(r.volume, []).append(r)
        return [volume_view(v, reps.get(v.name, []), nodes) for v in await self.repo.volumes()]

    async def create_volume(self, req: VolumeCreate) -> dict[str, Any]:
        count = req.replicas or self.settings.default_replicas
        snapshot_name = None
        if req.source is not None:
            src = await self.repo.volume(req.source.volume)
            if src.deleting or src.released:
                raise WrongState(f"source volume {src.name} is being deleted")
            if req.source.snapshot is not None:
                snap = await self.repo.snapshot(src.name, req.source.snapshot)
                if snap.state is not SnapshotState.READY:
                    raise WrongState(f"snapshot {snap.name} of {src.name} is {snap.state.value}")
                snapshot_name = snap.name
            if req.size_bytes < src.size_bytes:
                raise InvalidArgument(
                    f"a clone must be at least as large as its source: {req.size_bytes} < "
                    f"{src.size_bytes} bytes"
                )
        await self._name_free(req.name)
        try:
            reps = await self.repo.plan_replicas(
                req.name,
                req.size_bytes,
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
            size_bytes=req.size_bytes,
            replicas_wanted=count,
            zone_spread=req.zone_spread,
            node_tags=req.node_tags,
            disk_tags=req.disk_tags,
            reclaim_policy=req.reclaim_policy,
            stale_replica_timeout=req.stale_replica_timeout,
            source=req.source,
            created_at=t,
            initialized=req.source is None,
        )
        await self.repo.create_volume(vol, reps)
        if req.source is not None:
            if snapshot_name is None:  # clone a volume: through a snapshot taken now
                snapshot_name = f"clone-{req.name}-{new_id('')}"
                await self._snapshot_op(req.source.volume, snapshot_name, {"clone-for": req.name})
            await self._operation(
                OperationKind.CLONE,
                req.name,
                {"source_volume": req.source.volume, "snapshot": snapshot_name},
            )
        log.info(
            "volume %s created: %d bytes, replicas on %s",
            req.name,
            req.size_bytes,
            ", ".join(f"{r.node}/{r.disk}" for r in reps),
        )
        self.kick.set()
        return await self.view(vol)

    async def _name_free(self, name: str) -> None:
        try:
            await self.repo.volume(name)
        except NotFound:
            return
        raise AlreadyExists(f"volume {name} already exists")

    async def attach(self, name: str, req: AttachRequest) -> dict[str, Any]:
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
                raise WrongState(f"volume {name} is still being cloned; try again when it is ready")
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
            return v

        vol = await self.repo.update_volume(name, change)
        self.kick.set()
        return await self.view(vol)

    async def detach(self, name: str) -> dict[str, Any]:
        def change(v: Volume) -> Volume | None:
            if v.attach_node is None:
                return None
            v.attach_node = None
            return v

        vol = await self.repo.update_volume(name, change)
        self.kick.set()
        return await self.view(vol)

    async def delete_volume(self, name: str, purge: bool = False) -> dict[str, Any]:
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

    async def expand(self, name: str, req: ExpandRequest) -> dict[str, Any]:
        vol = await self.repo.volume(name)
        if req.size_bytes % 4096:
            raise InvalidArgument(f"size_bytes must be a multiple of 4096, got {req.size_bytes}")
        if req.size_bytes < vol.size_bytes:
            raise InvalidArgument(
                f"volumes only grow: {req.size_bytes} < {vol.size_bytes} bytes (the current size)"
            )
        self._usable(vol)
        op = await self._operation(OperationKind.EXPAND, name, {"size_bytes": req.size_bytes})
        return op.model_dump()

    async def scrub(self, name: str) -> dict[str, Any]:
        """A scrub pass of every replica, run by the volume's engine (it must be attached):
        the operation's result is the pass's report (found, repaired, the bad blocks)."""
        vol = await self.repo.volume(name)
        self._usable(vol)
        if vol.attach_node is None:
            raise WrongState(f"volume {name} is detached: a scrub runs in its engine; attach it")
        op = await self._operation(OperationKind.SCRUB, name, {})
        return op.model_dump()

    async def recover_epoch(self, name: str) -> dict[str, Any]:
        """A volume fenced by a bogus epoch (a replica accepted an epoch the manager never
        issued: an older version without the bound, or a hostile client): raise the volume's
        epoch above the highest its replicas report, so that the next engine (allowed to
        jump epochs, ``EngineSpec.epoch_jump``) opens them all. A replica whose node has not
        reported yet is not counted: run it again once every node is up."""
        vol = await self.repo.volume(name)
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

    async def _operation(
        self, kind: OperationKind, volume: str, args: dict[str, Any], also: list[Put] | None = None
    ) -> Operation:
        op = Operation(id=new_id("op-"), kind=kind, volume=volume, args=args, created_at=now())
        await self.repo.create_operation(op, also=also)
        self.kick.set()
        return op

    def _usable(self, vol: Volume) -> None:
        if vol.deleting or vol.released:
            raise WrongState(f"volume {vol.name} is being deleted")
        if not vol.initialized:
            raise WrongState(f"volume {vol.name} is still being cloned")

    # --- snapshots ------------------------------------------------------------------------
    async def snapshots(self, name: str) -> list[dict[str, Any]]:
        await self.repo.volume(name)
        return [s.model_dump() for s in await self.repo.snapshots(name)]

    async def _snapshot_op(self, volume: str, snap: str, labels: dict[str, str]) -> Operation:
        rec = Snapshot(volume=volume, name=snap, labels=labels, created_at=now())
        op = await self._operation(
            OperationKind.SNAPSHOT_CREATE,
            volume,
            {"name": snap, "labels": labels},
            also=[Put(keys.snapshot(volume, snap), rec.model_dump_json().encode())],
        )
        return op

    async def create_snapshot(self, name: str, req: SnapshotCreate) -> dict[str, Any]:
        self._usable(await self.repo.volume(name))
        try:
            old = await self.repo.snapshot(name, req.name)
        except NotFound:
            old = None
        if old is not None:
            raise AlreadyExists(f"snapshot {req.name} of volume {name} already exists")
        op = await self._snapshot_op(name, req.name, req.labels)
        self.kick.set()
        return op.model_dump()

    async def delete_snapshot(self, name: str, snap: str) -> dict[str, Any]:
        self._usable(await self.repo.volume(name))

        def change(s: Snapshot) -> Snapshot:
            if s.state is SnapshotState.PENDING:
                raise WrongState(f"snapshot {snap} is still being created")
            s.state = SnapshotState.DELETING
            return s

        await self.repo.update_snapshot(name, snap, change)
        op = await self._operation(OperationKind.SNAPSHOT_DELETE, name, {"name": snap})
        return op.model_dump()

    async def revert(self, name: str, snap: str) -> dict[str, Any]:
        vol = await self.repo.volume(name)
        self._usable(vol)
        if vol.attach_node is not None:
            raise WrongState(
                f"volume {name} is attached to node {vol.attach_node}: detach it before a "
                "revert (its filesystem must not be mounted while its blocks change)"
            )
        s = await self.repo.snapshot(name, snap)
        if s.state is not SnapshotState.READY:
            raise WrongState(f"snapshot {snap} is {s.state.value}")
        op = await self._operation(OperationKind.SNAPSHOT_REVERT, name, {"name": snap})
        return op.model_dump()

    # --- the rest ------------------------------------------------------------------------
    async def operations(self, volume: str | None) -> list[dict[str, Any]]:
        return [o.model_dump() for o in await self.repo.operations(volume)]

    async def operation(self, oid: str) -> dict[str, Any]:
        return (await self.repo.operation(oid)).model_dump()

    async def replicas(self, volume: str | None) -> list[dict[str, Any]]:
        if volume is not None:
            return (await self.volume(volume))["replicas"]
        out = []
        for v in await self.volumes():
            out.extend(v["replicas"])
        return out

    async def attachments(self) -> list[dict[str, Any]]:
        return [
            {
                "volume": v["name"],
                "node": v["attached_node"],
                "endpoint": v["endpoint"],
                "epoch": v["epoch"],
                "state": v["state"],
            }
            for v in await self.volumes()
            if v["attached_node"] is not None
        ]

    async def health(self) -> dict[str, Any]:
        """``/healthz``: the state store answers within ``HEALTH_TIMEOUT`` and the damage
        requests or reconcilers ran into is repaired; else ManagerUnavailable (or
        StateStoreDamaged) saying what is wrong, which the API answers with 503."""
        try:
            await asyncio.wait_for(self.repo.check(), HEALTH_TIMEOUT)
        except TimeoutError:
            raise ManagerUnavailable(
                f"the {self.backend} state store did not answer within {HEALTH_TIMEOUT:g} s"
            ) from None
        return {
            "ok": True,
            "leader": self.is_leader,
            "manager": self.manager_id,
            "backend": self.backend,
        }

    async def status(self) -> dict[str, Any]:
        nodes = await self.repo.nodes()
        vols = await self.repo.volumes()
        disks = await self.repo.disks()
        counts = {s.value: 0 for s in NodeState}
        for n in nodes:
            counts[n.state.value] += 1
        vcount = {"total": len(vols), "healthy": 0, "degraded": 0, "faulted": 0, "attached": 0}
        for v in vols:
            if v.robustness.value in vcount:
                vcount[v.robustness.value] += 1
            vcount["attached"] += v.attach_node is not None
        reps = await self.repo.replicas()
        return {
            "backend": self.backend,
            "manager": self.manager_id,
            "leader": await self.repo.store.leader("manager"),
            "nodes": counts,
            "volumes": vcount,
            "capacity_bytes": sum(d.capacity_bytes for d in disks),
            "allocated_bytes": sum(r.size_bytes for r in reps if not r.deleting),
            "cluster_id": self.repo.cluster_id,
        }

    # --- orphans and events -----------------------------------------------------------------
    async def orphans(self, node: str | None = None) -> list[dict[str, Any]]:
        return [o.model_dump() for o in await self.repo.orphans(node)]

    async def delete_orphan(self, node: str, rid: str) -> dict[str, Any]:
        """An operator deletes an orphan: a tombstone, then its node deletes it (into its
        disk's trash). The agent refuses when the replica is another cluster's."""
        found = [o for o in await self.repo.orphans(node) if o.id == rid]
        if not found:
            raise NotFound(f"no orphan replica {rid} on node {node}")
        orphan = found[0]
        await self.repo.condemn_orphan(orphan, "orphan deleted")
        log.warning("orphan replica %s on node %s deleted by an operator", rid, node)
        await self.repo.add_event(
            EventKind.ORPHAN_DELETED,
            f"orphan replica {rid} on node {node} deleted by an operator",
            node=node,
            volume=orphan.volume,
            replica=rid,
        )
        return orphan.model_dump()

    async def adopt(self, req: AdoptRequest) -> dict[str, Any]:
        """Recreate a volume's records from its orphaned replicas (control/adoption.py)."""
        plan = await adopt(self.repo, req)
        self.kick.set()
        return plan.model_dump()

    async def events(self) -> list[dict[str, Any]]:
        return [e.model_dump() for e in await self.repo.events()]
