"""Group snapshots: snapshots of several volumes at one crash-consistent point (a
database's data and WAL volumes), driven step by step through the engines' operations.

The steps, each a set of operations the engines run (``OperationKind``), recorded in the
``GroupSnapshot`` (``ops``: each volume's operation of the step):

1. ``holding``: HOLD on every volume's engine, one after another in the group's fixed order
   (sorted names: two groups never wait on each other crosswise); each engine holds new
   writes, answers those in flight, and stays held (for ``hold_seconds`` at most: then it
   releases by itself, engine/holds.py). A write acknowledged on any volume before its hold
   is in every snapshot; none is acknowledged on a held volume — so a write that was issued
   only after another volume's write was acknowledged (a commit marker after its record) is
   in the group only if that other write is too.
2. ``snapshotting``: all held: SNAPSHOT_CREATE of ``name`` on every volume, inside its hold.
3. ``releasing``: RELEASE on every volume (whatever happened), then ``ready`` — or, when a
   step failed, the member snapshots taken are deleted and the group is ``failed``:
   all or nothing.

Deleting a group deletes its member snapshots, then its record. A group that makes no
progress for ``2 * hold_seconds + STUCK_GRACE`` seconds (an engine that never came) fails.

Called by the manager's reconcile loop (``GroupSnapshotReconciler.run_once``, stepped again
when an operation finishes) and by ``service_groups.py`` (the API's calls).
"""

from __future__ import annotations

import logging
from typing import Any

from cargohold.control.key_generations import snapshot_generations
from cargohold.control.model import (
    GroupSnapshot,
    GroupSnapshotState,
    Operation,
    OperationKind,
    OperationState,
    Snapshot,
    SnapshotState,
    keys,
)
from cargohold.control.repository import Repository, new_id, now
from cargohold.control.settings import ManagerSettings
from cargohold.control.state.base import Compare, Delete, Put
from cargohold.errors import NotFound

log = logging.getLogger("cargohold.manager")

STUCK_GRACE = 30.0  # seconds beyond twice the hold after which a group in flight fails
GROUP_LABEL = "cargohold.io/group-snapshot"  # on each member snapshot: its group's name
IN_FLIGHT = (
    GroupSnapshotState.HOLDING,
    GroupSnapshotState.SNAPSHOTTING,
    GroupSnapshotState.RELEASING,
)


# --- records ---------------------------------------------------------------------------------
async def get(repo: Repository, name: str) -> GroupSnapshot:
    got = await repo._get(keys.group_snapshot(name), GroupSnapshot)
    if got is None:
        raise NotFound(f"group snapshot {name} not found")
    return got[0]


async def listing(repo: Repository) -> list[GroupSnapshot]:
    return await repo._list(keys.GROUP_SNAPSHOTS, GroupSnapshot)


async def create(repo: Repository, group: GroupSnapshot) -> None:
    await repo._create(keys.group_snapshot(group.name), group, f"group snapshot {group.name}")


async def update(repo: Repository, name: str, **fields: Any) -> GroupSnapshot:
    def change(g: GroupSnapshot) -> GroupSnapshot:
        for k, v in fields.items():
            setattr(g, k, v)
        return g

    return await repo._update(
        keys.group_snapshot(name), GroupSnapshot, change, f"group snapshot {name}"
    )


async def drop(repo: Repository, name: str) -> None:
    key = keys.group_snapshot(name)
    got = await repo._get(key, GroupSnapshot)
    if got is not None and await repo.store.txn([Compare(key, got[1])], [Delete(key)]):
        repo._notify(got[0], None)
    repo._forget(key)


async def _operation(
    repo: Repository,
    kind: OperationKind,
    volume: str,
    args: dict[str, Any],
    also: list[Put] | None = None,
) -> Operation:
    op = Operation(id=new_id("op-"), kind=kind, volume=volume, args=args, created_at=now())
    return await repo.create_operation(op, also=also)


async def _state_of(repo: Repository, oid: str | None) -> OperationState | None:
    """The state of operation ``oid`` (None: no such operation)."""
    if oid is None:
        return None
    try:
        return (await repo.operation(oid)).state
    except NotFound:
        return None


async def _error_of(repo: Repository, oid: str) -> str:
    try:
        return (await repo.operation(oid)).error or "failed"
    except NotFound:
        return "its operation is gone"


# --- the steps -------------------------------------------------------------------------------
async def step(repo: Repository, g: GroupSnapshot) -> GroupSnapshot | None:
    """Move ``g`` on as far as its operations allow; -> the record now (None: deleted)."""
    if g.state in IN_FLIGHT and now() - g.created_at > 2 * g.hold_seconds + STUCK_GRACE:
        if g.state is not GroupSnapshotState.RELEASING:
            return await _fail(repo, g, "timed out: the volumes' engines did not all answer")
    if g.state is GroupSnapshotState.HOLDING:
        return await _holding(repo, g)
    if g.state is GroupSnapshotState.SNAPSHOTTING:
        return await _snapshotting(repo, g)
    if g.state is GroupSnapshotState.RELEASING:
        return await _releasing(repo, g)
    if g.state is GroupSnapshotState.DELETING:
        if await _delete_members(repo, g):
            await drop(repo, g.name)
            log.info("group snapshot %s deleted", g.name)
            return None
    return g


async def _holding(repo: Repository, g: GroupSnapshot) -> GroupSnapshot:
    for vol in g.volumes:  # in order: the next is held only once the one before it is
        oid = g.ops.get(vol)
        state = await _state_of(repo, oid)
        if state is None:
            op = await _operation(
                repo, OperationKind.HOLD, vol, {"group": g.name, "seconds": float(g.hold_seconds)}
            )
            return await update(repo, g.name, ops={**g.ops, vol: op.id})
        if state is OperationState.FAILED:
            assert oid is not None
            return await _fail(repo, g, f"volume {vol}: hold: {await _error_of(repo, oid)}")
        if state is not OperationState.SUCCEEDED:
            return g  # still holding this one
    ops: dict[str, str] = {}
    for vol in g.volumes:  # all held: take every snapshot inside its hold
        labels = {GROUP_LABEL: g.name}
        rec = Snapshot(volume=vol, name=g.name, labels=labels, created_at=now())
        try:
            rec.key_generations = snapshot_generations((await repo.volume(vol)).encryption)
            op = await _operation(
                repo,
                OperationKind.SNAPSHOT_CREATE,
                vol,
                {"name": g.name, "labels": labels, "hold": g.name},
                also=[Put(keys.snapshot(vol, g.name), rec.model_dump_json().encode())],
            )
        except NotFound:
            return await _fail(repo, g, f"volume {vol} is gone")
        ops[vol] = op.id
    log.info("group snapshot %s: %d volumes held, taking their snapshots", g.name, len(ops))
    return await update(repo, g.name, state=GroupSnapshotState.SNAPSHOTTING, ops=ops)


async def _snapshotting(repo: Repository, g: GroupSnapshot) -> GroupSnapshot:
    errors = []
    for vol in g.volumes:
        oid = g.ops.get(vol)
        state = await _state_of(repo, oid)
        if state is None or oid is None:
            errors.append(f"volume {vol}: its snapshot's operation is gone")
        elif state is OperationState.FAILED:
            errors.append(f"volume {vol}: snapshot: {await _error_of(repo, oid)}")
        elif state is not OperationState.SUCCEEDED:
            return g
    if errors:
        return await _fail(repo, g, "; ".join(errors))
    return await _release(repo, g, "")


async def _fail(repo: Repository, g: GroupSnapshot, error: str) -> GroupSnapshot:
    log.warning("group snapshot %s failed: %s", g.name, error)
    return await _release(repo, g, error)


async def _release(repo: Repository, g: GroupSnapshot, error: str) -> GroupSnapshot:
    ops = {}
    for vol in g.volumes:
        try:
            ops[vol] = (await _operation(repo, OperationKind.RELEASE, vol, {"group": g.name})).id
        except NotFound:
            continue
    return await update(repo, g.name, state=GroupSnapshotState.RELEASING, ops=ops, error=error)


async def _releasing(repo: Repository, g: GroupSnapshot) -> GroupSnapshot:
    for vol in g.volumes:
        state = await _state_of(repo, g.ops.get(vol))
        if state is not None and state not in (OperationState.SUCCEEDED, OperationState.FAILED):
            # a release that fails is harmless: the hold ends by itself at its deadline
            if now() - g.created_at < 2 * g.hold_seconds + STUCK_GRACE:
                return g
    if not g.error:
        log.info("group snapshot %s is ready (%s)", g.name, ", ".join(g.volumes))
        return await update(repo, g.name, state=GroupSnapshotState.READY, ops={}, ready_at=now())
    if await _delete_members(repo, g):  # all or nothing: what was taken goes
        return await update(repo, g.name, state=GroupSnapshotState.FAILED, ops={})
    return g


async def _delete_members(repo: Repository, g: GroupSnapshot) -> bool:
    """Ask for the deletion of each member snapshot still there; -> whether none is left."""
    left = False
    for vol in g.volumes:
        try:
            snap = await repo.snapshot(vol, g.name)
        except NotFound:
            continue
        if snap.labels.get(GROUP_LABEL) != g.name:
            continue  # not this group's (it never took it): not ours to delete
        left = True
        if snap.state is SnapshotState.DELETING:
            continue  # its deletion runs
        if snap.state is SnapshotState.PENDING:
            continue  # its creation runs still: deleted once it ended

        def deleting(s: Snapshot) -> Snapshot:
            s.state = SnapshotState.DELETING
            return s

        if snap.state is SnapshotState.ERROR:  # never taken on the replicas: only the record
            await repo.delete_snapshot_record(vol, g.name)
            continue
        await repo.update_snapshot(vol, g.name, deleting)
        await _operation(repo, OperationKind.SNAPSHOT_DELETE, vol, {"name": g.name})
    return not left


def holding_volumes(groups: list[GroupSnapshot]) -> set[str]:
    """The volumes of the groups in flight: each needs its engine until its group is done
    (the engine reconciler keeps a maintenance engine for a detached one)."""
    return {v for g in groups if g.state in IN_FLIGHT for v in g.volumes}


class GroupSnapshotReconciler:
    """Steps every group snapshot in flight or being deleted (``step``)."""

    def __init__(self, repo: Repository, settings: ManagerSettings) -> None:
        self.repo, self.settings = repo, settings

    async def run_once(self) -> None:
        for g in await listing(self.repo):
            if g.state in (GroupSnapshotState.READY, GroupSnapshotState.FAILED):
                continue
            try:
                await step(self.repo, g)
            except NotFound:
                continue
