"""Typed access to the manager's records over any state store (SQLite, etcd, memory).

Every change is a compare-and-swap: read the record with its revision, change it, write it
back only if nobody changed it meanwhile, else retry with the fresh record. That makes API
requests, heartbeats and reconcilers — in one manager or several — safe without locks.
Writes that must happen together (a volume's epoch bump with its engine's replica set; a
new replica with the volume it belongs to still existing) are one transaction.

``observers`` are told of every record this repository writes, as ``(old, new)`` (None for
absent; ``old`` None too when it was not read first): the manager's ``AssignmentWatch``
wakes the heartbeats held for the nodes a change concerns (cargohold/control/watch.py).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from cargohold.control import event_log
from cargohold.control.access import Tenant
from cargohold.control.model import (
    Cluster,
    Disk,
    Event,
    EventKind,
    Node,
    Operation,
    Orphan,
    Replica,
    Snapshot,
    Tombstone,
    Volume,
    keys,
)
from cargohold.control.repository_backups import BackupRecords
from cargohold.control.scheduler import PlacementRequest, place
from cargohold.control.state.base import Compare, Delete, Put, StateStore
from cargohold.errors import AlreadyExists, Busy, NotFound, StateStoreDamaged

M = TypeVar("M", bound=BaseModel)
MAX_RETRIES = 64
PARSED_MAX = 200_000  # parsed records kept (then the cache starts over)
EVENTS_KEPT = event_log.OVERALL  # the newest events kept in the store
_event_seq = itertools.count()  # orders this manager's events of one clock tick


class Conflict(Busy):
    """Too many concurrent writers on one record; the caller may retry."""


def _dump(rec: BaseModel) -> bytes:
    return rec.model_dump_json().encode()


Observer = Callable[[BaseModel | None, BaseModel | None], None]


class Repository(BackupRecords):
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.observers: list[Observer] = []
        self.cluster_id = ""  # set by the manager at start (control/identity.py)
        # node -> the ids of the replicas it reported last that no record names (in memory,
        # per manager: a heartbeat with none, after one with none, reads no orphan record)
        self.unknown_seen: dict[str, frozenset[str]] = {}
        self._parsed: dict[str, tuple[int, BaseModel]] = {}  # key -> (mod_revision, record)
        # damage seen in the store, until ``check`` finds it repaired: record key -> (its
        # model, what is wrong); the key "" stands for the store's file itself
        self.damaged: dict[str, tuple[type[BaseModel] | None, str]] = {}
        self.events_recorded: collections.Counter[str] = collections.Counter()  # metrics

    def note_damage(self, e: StateStoreDamaged) -> None:
        """Remember damage a caller ran into (the API's error handler, a reconciler pass),
        so that the health check fails until it is repaired."""
        key = e.detail.get("key", "")
        if key not in self.damaged:
            self.damaged[key] = (e.detail.get("model"), str(e))

    async def check(self) -> None:
        """The health check: the store answers, and the damage seen is repaired (a record
        that parses again or is gone; a file SQLite's own check passes). Raises
        ManagerUnavailable or StateStoreDamaged, whose message names what is wrong."""
        await self.store.check(deep="" in self.damaged)
        self.damaged.pop("", None)
        for key, (model, _) in list(self.damaged.items()):
            e = await self.store.get(key)
            if e is not None and model is not None:
                self._parse(key, e.value, e.mod_revision, model)  # raises while still bad
            self.damaged.pop(key, None)

    def _notify(self, old: BaseModel | None, new: BaseModel | None) -> None:
        for fn in self.observers:
            fn(old, new)

    # --- generic ---------------------------------------------------------------------
    def _parse(self, key: str, value: bytes, rev: int, model: type[M]) -> M:
        """The record, parsed once per (key, mod_revision): a mod revision is the store's
        revision of one write, never reused, so it names the value exactly (whichever
        manager wrote it). The record returned is shared with every other reader of that
        revision: never change it in place (``update_*`` changes a deep copy; a caller
        that wants to scribble on one takes ``model_copy()`` first)."""
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == rev and type(hit[1]) is model:
            return hit[1]  # its type is model: an M
        try:
            rec = model.model_validate_json(value)
        except ValidationError as e:  # not JSON, or not a valid record
            why = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
                for err in e.errors(include_url=False, include_input=False)[:3]
            )
            damage = StateStoreDamaged(
                f"state store record {key} is damaged: {why} (fix or delete the record; "
                "see docs/operations.md)",
                key=key,
                model=model,
            )
            self.note_damage(damage)
            raise damage from None
        if len(self._parsed) >= PARSED_MAX:
            self._parsed.clear()
        self._parsed[key] = (rev, rec)
        return rec

    def _forget(self, key: str) -> None:
        self._parsed.pop(key, None)

    async def _get(self, key: str, model: type[M]) -> tuple[M, int] | None:
        e = await self.store.get(key)
        if e is None:
            self._forget(key)
            return None
        return self._parse(key, e.value, e.mod_revision, model), e.mod_revision

    async def _list(self, prefix: str, model: type[M]) -> list[M]:
        return [
            self._parse(e.key, e.value, e.mod_revision, model)
            for e in await self.store.range(prefix)
        ]

    async def _create(self, key: str, rec: BaseModel, what: str) -> None:
        if not await self.store.txn([Compare(key, 0)], [Put(key, _dump(rec))]):
            raise AlreadyExists(f"{what} already exists")
        self._notify(None, rec)

    async def _update(
        self,
        key: str,
        model: type[M],
        change: Callable[[M], M | None] | Callable[[M], Awaitable[M | None]],
        what: str,
    ) -> M:
        """Apply ``change`` to the fresh record until the write wins. ``change`` may raise
        to refuse, or return None to leave the record as it is."""
        for _ in range(MAX_RETRIES):
            got = await self._get(key, model)
            if got is None:
                raise NotFound(f"{what} not found")
            rec, rev = got
            changed = change(rec.model_copy(deep=True))
            new: M | None = await changed if inspect.isawaitable(changed) else changed
            if new is None or new == rec:
                return rec
            if await self.store.txn([Compare(key, rev)], [Put(key, _dump(new))]):
                self._notify(rec, new)
                return new
        raise Conflict(f"{what}: too many concurrent changes, try again")

    # --- nodes and disks ----------------------------------------------------------------
    async def node(self, name: str) -> Node:
        got = await self._get(keys.node(name), Node)
        if got is None:
            raise NotFound(f"node {name} not found")
        return got[0]

    async def nodes(self) -> list[Node]:
        return await self._list(keys.NODES, Node)

    async def upsert_node(self, name: str, make: Callable[[Node | None], Node]) -> Node:
        key = keys.node(name)
        for _ in range(MAX_RETRIES):
            got = await self._get(key, Node)
            old, rev = got if got else (None, 0)
            new = make(old.model_copy(deep=True) if old else None)
            if await self.store.txn([Compare(key, rev)], [Put(key, _dump(new))]):
                self._notify(old, new)
                return new
        raise Conflict(f"node {name}: too many concurrent changes, try again")

    async def update_node(self, name: str, change: Callable[[Node], Node | None]) -> Node:
        return await self._update(keys.node(name), Node, change, f"node {name}")

    async def disks(self, node: str | None = None) -> list[Disk]:
        return await self._list(keys.disk(node, "") if node else keys.DISKS, Disk)

    async def put_disk(self, disk: Disk) -> None:
        await self.store.put(keys.disk(disk.node, disk.name), _dump(disk))
        self._notify(None, disk)

    async def create_disk(self, disk: Disk) -> None:
        await self._create(
            keys.disk(disk.node, disk.name), disk, f"disk {disk.name} on node {disk.node}"
        )

    # --- volumes ------------------------------------------------------------------------
    async def volume(self, name: str) -> Volume:
        got = await self._get(keys.volume(name), Volume)
        if got is None:
            raise NotFound(f"volume {name} not found")
        return got[0]

    async def volumes(self) -> list[Volume]:
        return await self._list(keys.VOLUMES, Volume)

    async def clones_of(self, volume: str) -> list[Volume]:
        """The volumes made from ``volume`` (clones of it or of its snapshots). Only records
        that mention the name are parsed — the console's volume page asks this with
        thousands of volumes in the store; the check after parsing is the exact one."""
        needle = json.dumps(volume, ensure_ascii=False).encode()
        out = []
        for e in await self.store.range(keys.VOLUMES):
            if needle in e.value:
                v = self._parse(e.key, e.value, e.mod_revision, Volume)
                if v.source is not None and v.source.volume == volume:
                    out.append(v)
        return out

    async def create_volume(
        self, vol: Volume, replicas: list[Replica], guard: Guard | None = None
    ) -> None:
        """The volume and its first replicas, all or nothing. ``guard`` (a tenant's quota
        admission, ``tenant_guard``): also only if the tenant record is unchanged, else
        Conflict (the caller checks the quota again)."""
        compares = [Compare(keys.volume(vol.name), 0)]
        ops: list[Put | Delete] = [Put(keys.volume(vol.name), _dump(vol))]
        if guard is not None:
            if await self.store.get(keys.volume(vol.name)) is not None:
                raise AlreadyExists(f"volume {vol.name} already exists")
            compares.append(guard[0])
            ops.append(guard[1])
        for r in replicas:
            compares.append(Compare(keys.replica(vol.name, r.id), 0))
            ops.append(Put(keys.replica(vol.name, r.id), _dump(r)))
        if not await self.store.txn(compares, ops):
            if guard is not None and await self.store.get(keys.volume(vol.name)) is None:
                raise TenantChanged(f"volume {vol.name}: its tenant's allocations changed")
            raise AlreadyExists(f"volume {vol.name} already exists")
        self._notify(None, vol)
        for r in replicas:
            self._notify(None, r)

    async def update_volume(
        self,
        name: str,
        change: Callable[[Volume], Volume | None] | Callable[[Volume], Awaitable[Volume | None]],
    ) -> Volume:
        return await self._update(keys.volume(name), Volume, change, f"volume {name}")

    async def delete_volume_records(self, name: str) -> None:
        """The volume's last records go together: replicas (each leaving a tombstone, the
        evidence a returning node needs to delete its copy), snapshots, the volume."""
        ops: list[Put | Delete] = []
        for e in await self.store.range(f"/replicas/{name}/"):
            ops.append(Delete(e.key))
            rep = self._parse(e.key, e.value, e.mod_revision, Replica)
            ops.append(self._tombstone_put(rep.volume, rep.id, rep.node, "volume deleted"))
        ops += [Delete(e.key) for e in await self.store.range(f"/snapshots/{name}/")]
        ops.append(Delete(keys.volume(name)))
        await self.store.txn([], ops)
        for op in ops:
            self._forget(op.key)

    # --- replicas -----------------------------------------------------------------------
    async def replicas(self, volume: str | None = None) -> list[Replica]:
        return await self._list(f"/replicas/{volume}/" if volume else keys.REPLICAS, Replica)

    async def add_replica(self, vol_name: str, rep: Replica) -> bool:
        """A new replica, only if its volume still exists unchanged since ``vol_rev`` is
        not required: only that the volume exists and is not being deleted."""
        got = await self._get(keys.volume(vol_name), Volume)
        if got is None or got[0].deleting:
            return False
        done = await self.store.txn(
            [Compare(keys.volume(vol_name), got[1]), Compare(keys.replica(vol_name, rep.id), 0)],
            [Put(keys.replica(vol_name, rep.id), _dump(rep))],
        )
        if done:
            self._notify(None, rep)
        return done

    async def update_replica(
        self, volume: str, rid: str, change: Callable[[Replica], Replica | None]
    ) -> Replica:
        return await self._update(
            keys.replica(volume, rid), Replica, change, f"replica {rid} of volume {volume}"
        )

    async def plan_replicas(
        self,
        volume: str,
        size_bytes: int,
        count: int,
        *,
        zone_spread: bool,
        node_tags: list[str],
        disk_tags: list[str],
        overprovisioning: float,
        preferred_nodes: list[str] | None = None,
    ) -> list[Replica]:
        """New replica records for ``count`` more copies of ``volume``, placed by the
        scheduler over the nodes, disks and replicas as recorded now (not yet stored).
        Raises Unschedulable with the reason when they do not fit."""
        request = PlacementRequest(
            volume=volume,
            size_bytes=size_bytes,
            count=count,
            zone_spread=zone_spread,
            node_tags=tuple(node_tags),
            disk_tags=tuple(disk_tags),
            preferred_nodes=tuple(preferred_nodes or ()),
        )
        disks = await self.disks()
        placement = place(
            request,
            await self.nodes(),
            disks,
            await self.replicas(),
            overprovisioning=overprovisioning,
        )
        paths = {(d.node, d.name): d.path for d in disks}
        t = now()
        return [
            Replica(
                id=new_id(f"{volume}-r"),
                volume=volume,
                node=node,
                disk=disk,
                disk_path=paths[(node, disk)],
                size_bytes=size_bytes,
                created_at=t,
            )
            for node, disk in placement
        ]

    async def delete_replica_record(self, volume: str, rid: str, gone: bool = False) -> None:
        """The record goes, and a tombstone comes, in one transaction. ``gone``: its node
        no longer has it (the tombstone is born done)."""
        key = keys.replica(volume, rid)
        got = await self._get(key, Replica)
        if got is None:
            return
        rep, rev = got
        stone = self._tombstone(volume, rid, rep.node, "replica deleted")
        stone.done_at = stone.deleted_at if gone else None
        if await self.store.txn(
            [Compare(key, rev)], [Delete(key), Put(keys.tombstone(volume, rid), _dump(stone))]
        ):
            self._forget(key)
            self._notify(rep, None)

    # --- cluster identity, tombstones, orphans, events -------------------------------------
    def _tombstone(self, volume: str, rid: str, node: str, reason: str) -> Tombstone:
        return Tombstone(
            replica=rid,
            volume=volume,
            node=node,
            cluster_id=self.cluster_id,
            deleted_at=now(),
            reason=reason,
        )

    def _tombstone_put(self, volume: str, rid: str, node: str, reason: str) -> Put:
        stone = self._tombstone(volume, rid, node, reason)
        return Put(keys.tombstone(volume, rid), _dump(stone))

    async def cluster(self) -> Cluster | None:
        got = await self._get(keys.CLUSTER, Cluster)
        return got[0] if got else None

    async def tombstones(self) -> list[Tombstone]:
        return await self._list(keys.TOMBSTONES, Tombstone)

    async def update_tombstone(
        self, volume: str, rid: str, change: Callable[[Tombstone], Tombstone | None]
    ) -> Tombstone:
        return await self._update(
            keys.tombstone(volume, rid), Tombstone, change, f"tombstone of replica {rid}"
        )

    async def delete_tombstone(self, volume: str, rid: str) -> None:
        await self.store.delete(keys.tombstone(volume, rid))
        self._forget(keys.tombstone(volume, rid))

    async def orphans(self, node: str | None = None) -> list[Orphan]:
        return await self._list(keys.orphan(node, "") if node else keys.ORPHANS, Orphan)

    async def put_orphan(self, orphan: Orphan) -> None:
        await self.store.put(keys.orphan(orphan.node, orphan.id), _dump(orphan))

    async def drop_orphan(self, node: str, rid: str) -> None:
        """Forget an orphan record (it is in a record again, or gone from the disk)."""
        await self.store.delete(keys.orphan(node, rid))
        self._forget(keys.orphan(node, rid))

    async def condemn_orphan(self, orphan: Orphan, reason: str) -> None:
        """Delete an orphan: its record goes and a tombstone comes (the agent deletes it
        at its next heartbeat, into the trash), in one transaction."""
        key = keys.orphan(orphan.node, orphan.id)
        stone = self._tombstone(orphan.volume, orphan.id, orphan.node, reason)
        await self.store.txn(
            [], [Delete(key), Put(keys.tombstone(orphan.volume, orphan.id), _dump(stone))]
        )
        self._forget(key)
        self._notify(None, stone)  # wakes the node's held heartbeat

    async def add_event(
        self,
        kind: EventKind,
        message: str,
        *,
        node: str = "",
        volume: str = "",
        replica: str = "",
    ) -> Event:
        t = now()
        ev = Event(
            id=f"{int(t * 1e9):020d}-{next(_event_seq) % 1_000_000:06d}{secrets.token_hex(2)}",
            at=t,
            kind=kind,
            message=message,
            node=node,
            volume=volume,
            replica=replica,
        )
        await self.store.put(keys.event(ev.id), _dump(ev))
        self.events_recorded[kind.value] += 1
        return ev

    async def events(self) -> list[Event]:
        return await self._list(keys.EVENTS, Event)

    async def trim_events(self, keep: int = EVENTS_KEPT) -> int:
        """Delete all but the newest ``keep`` events, and each volume's beyond its newest
        ``event_log.PER_VOLUME`` (event_log.prune). -> how many went."""
        entries = await self.store.range(keys.EVENTS)
        events = await self.events()
        pairs = [(e.id, e.volume) for e in events]
        doomed = set(event_log.prune(pairs, event_log.PER_VOLUME, keep))
        old = [e for e in entries if e.key.removeprefix(keys.EVENTS) in doomed]
        if old:
            await self.store.txn([], [Delete(e.key) for e in old])
            for e in old:
                self._forget(e.key)
        return len(old)

    # --- snapshots ------------------------------------------------------------------------
    async def snapshots(self, volume: str) -> list[Snapshot]:
        return await self._list(f"/snapshots/{volume}/", Snapshot)

    async def snapshot(self, volume: str, name: str) -> Snapshot:
        got = await self._get(keys.snapshot(volume, name), Snapshot)
        if got is None:
            raise NotFound(f"snapshot {name} of volume {volume} not found")
        return got[0]

    async def put_snapshot(self, snap: Snapshot) -> None:
        await self.store.put(keys.snapshot(snap.volume, snap.name), _dump(snap))

    async def update_snapshot(
        self, volume: str, name: str, change: Callable[[Snapshot], Snapshot | None]
    ) -> Snapshot:
        return await self._update(
            keys.snapshot(volume, name), Snapshot, change, f"snapshot {name} of {volume}"
        )

    async def delete_snapshot_record(self, volume: str, name: str) -> None:
        await self.store.delete(keys.snapshot(volume, name))
        self._forget(keys.snapshot(volume, name))

    # --- tenants --------------------------------------------------------------------------
    async def tenant(self, name: str) -> tuple[Tenant, int]:
        """The tenant record and its mod revision (for ``tenant_guard``)."""
        got = await self._get(keys.tenant(name), Tenant)
        if got is None:
            raise NotFound(f"tenant {name} not found")
        return got

    async def tenants(self) -> list[Tenant]:
        return await self._list(keys.TENANTS, Tenant)

    async def create_tenant(self, tenant: Tenant) -> None:
        await self._create(keys.tenant(tenant.name), tenant, f"tenant {tenant.name}")

    async def update_tenant(self, name: str, change: Callable[[Tenant], Tenant | None]) -> Tenant:
        return await self._update(keys.tenant(name), Tenant, change, f"tenant {name}")

    async def delete_tenant(self, name: str, rev: int) -> bool:
        """Delete the tenant record if it is unchanged since ``rev`` (no volume was admitted
        for it meanwhile: every admission bumps it)."""
        done = await self.store.txn([Compare(keys.tenant(name), rev)], [Delete(keys.tenant(name))])
        if done:
            self._forget(keys.tenant(name))
        return done

    # --- operations -----------------------------------------------------------------------
    async def operations(self, volume: str | None = None) -> list[Operation]:
        ops = await self._list(keys.OPERATIONS, Operation)
        ops = [o for o in ops if volume is None or o.volume == volume]
        return sorted(ops, key=lambda o: (o.created_at, o.id))

    async def operation(self, oid: str) -> Operation:
        got = await self._get(keys.operation(oid), Operation)
        if got is None:
            raise NotFound(f"operation {oid} not found")
        return got[0]

    async def create_operation(
        self, op: Operation, also: list[Put] | None = None, guard: Guard | None = None
    ) -> Operation:
        """A new operation (with ``also`` in the same transaction); ``guard``: only if the
        tenant record is unchanged (``tenant_guard``), else TenantChanged."""
        compares = [Compare(keys.operation(op.id), 0)]
        ops: list[Put | Delete] = [Put(keys.operation(op.id), _dump(op)), *(also or [])]
        if guard is not None:
            compares.append(guard[0])
            ops.append(guard[1])
        if not await self.store.txn(compares, ops):
            if guard is not None:
                raise TenantChanged(f"operation on {op.volume}: its tenant's allocations changed")
            raise AlreadyExists(f"operation {op.id} already exists")
        self._notify(None, op)
        return op

    async def update_operation(
        self, oid: str, change: Callable[[Operation], Operation | None]
    ) -> Operation:
        return await self._update(keys.operation(oid), Operation, change, f"operation {oid}")

    async def delete_operation(self, oid: str) -> None:
        await self.store.delete(keys.operation(oid))
        self._forget(keys.operation(oid))


Guard = tuple[Compare, Put]
"""A condition and a write that go into another record's transaction (``tenant_guard``)."""


class TenantChanged(Conflict):
    """A guarded write lost: the tenant's record changed since it was read (another create
    or expansion was admitted, or the tenant went). The caller reads again and re-checks."""


def tenant_guard(tenant: Tenant, rev: int) -> Guard:
    """Admit one allocation for ``tenant`` read at ``rev``: the transaction holds only if
    nobody changed the tenant since, and bumps it, so a concurrent admission that read the
    same revision fails and checks the quota again on fresh numbers."""
    bumped = tenant.model_copy(update={"allocations": tenant.allocations + 1})
    return Compare(keys.tenant(tenant.name), rev), Put(keys.tenant(tenant.name), _dump(bumped))


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def now() -> float:
    return time.time()
