"""What a node reports of the operations its engines run (snapshots, expand, scrub,
clone): progress into the operation's record and, once it finished, its effect on the
other records (``apply_result``).

Called by heartbeat.py's ``handle`` once per operation in a report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cargohold.control import key_retention
from cargohold.control.backup_results import (
    fail_backups_of_snapshot,
    finish_restore,
    follow_backup,
)
from cargohold.control.model import (
    EventKind,
    Operation,
    OperationKind,
    OperationReport,
    OperationState,
    Replica,
    Snapshot,
    SnapshotState,
    Volume,
)
from cargohold.control.repository import Repository, now
from cargohold.errors import NotFound


async def ingest_operation(
    repo: Repository, orep: OperationReport, wake: Callable[[], None]
) -> None:
    try:
        op = await repo.operation(orep.id)
    except NotFound:
        return
    if op.done:
        return
    state = orep.state
    if (
        state is OperationState.FAILED
        and op.kind is OperationKind.SNAPSHOT_CREATE
        and "already exists" in orep.error
    ):
        state = OperationState.SUCCEEDED  # a retried create that had already happened
    if (
        state is OperationState.FAILED
        and op.kind is OperationKind.SNAPSHOT_DELETE
        and ("not found" in orep.error or "no snapshot" in orep.error)
    ):
        state = OperationState.SUCCEEDED
    done = state in (OperationState.SUCCEEDED, OperationState.FAILED)

    def progress(o: Operation) -> Operation:
        o.state, o.progress, o.error, o.result = state, orep.progress, orep.error, orep.result
        if done:
            o.finished_at = now()
            o.progress = 1.0 if state is OperationState.SUCCEEDED else o.progress
        return o

    op = await repo.update_operation(orep.id, progress)
    await follow_backup(repo, op)
    if done:
        await apply_result(repo, op)
        wake()


def snapshot_size(result: dict[str, Any], default: int) -> int:
    """The ``size_bytes`` of the snapshot in a snapshot-create result (the engine's
    answer: ``{"snapshot": {"size_bytes": N, ...}}``, the replica store's ``SnapshotInfo``:
    bytes of data in the snapshot's own layer); ``default`` when it does not say."""
    info = result.get("snapshot") if isinstance(result, dict) else None
    size = info.get("size_bytes") if isinstance(info, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else default


async def apply_result(repo: Repository, op: Operation) -> None:
    """What a finished operation changes in the records."""
    ok = op.state is OperationState.SUCCEEDED
    name = op.args.get("name", "")
    try:
        if op.kind is OperationKind.SNAPSHOT_CREATE:

            def snap(s: Snapshot) -> Snapshot:
                s.state = SnapshotState.READY if ok else SnapshotState.ERROR
                s.error = "" if ok else op.error
                if ok:  # the bytes its own layer holds on the replica, as it was taken
                    s.size_bytes = snapshot_size(op.result, s.size_bytes)
                return s

            await repo.update_snapshot(op.volume, name, snap)
            if ok:
                await repo.add_event(
                    EventKind.SNAPSHOT_CREATED, f"snapshot {name} taken", volume=op.volume
                )
                await key_retention.snapshot_taken(repo, op.volume, name)
            if not ok:
                await fail_backups_of_snapshot(repo, op.volume, name, op.error)
        elif op.kind is OperationKind.SNAPSHOT_DELETE:
            if ok:
                await repo.delete_snapshot_record(op.volume, name)
                await key_retention.drop_unneeded(repo, op.volume)  # the keys it kept
            else:

                def back(s: Snapshot) -> Snapshot:
                    s.state, s.error = SnapshotState.READY, op.error
                    return s

                await repo.update_snapshot(op.volume, name, back)
        elif op.kind is OperationKind.EXPAND and ok:
            size = int(op.args["size_bytes"])  # the replicas' (physical, when encrypted)
            logical = int(op.args.get("logical_size_bytes", size))

            def grow(v: Volume) -> Volume:
                v.size_bytes = max(v.size_bytes, logical)
                return v

            await repo.update_volume(op.volume, grow)
            for rep in await repo.replicas(op.volume):

                def rsize(r: Replica, size: int = size) -> Replica:
                    r.size_bytes = max(r.size_bytes, size)
                    return r

                await repo.update_replica(op.volume, rep.id, rsize)
        elif op.kind is OperationKind.CLONE:

            def cloned(v: Volume) -> Volume:
                v.initialized = ok or v.initialized
                v.error = "" if ok else f"clone failed: {op.error}"
                return v

            await repo.update_volume(op.volume, cloned)
        elif op.kind is OperationKind.RESTORE:
            await finish_restore(repo, op)
        elif op.kind is OperationKind.SNAPSHOT_REVERT and ok:
            await key_retention.snapshot_reverted(repo, op.volume, name)
    except NotFound:
        pass
