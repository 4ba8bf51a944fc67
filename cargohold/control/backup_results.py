"""What the engines' reports of BACKUP and RESTORE operations change in the records: a
backup's record follows its operation (running, progress, then the repository's
BackupInfo or the error); a restored volume becomes usable only when its RESTORE succeeded
(a failed one stays ``failed``, never presented as usable); a backup whose snapshot could
not be taken fails with it.

Called by operation_results.py (``ingest_operation``, ``apply_result``).
"""

from __future__ import annotations

from typing import Any

from cargohold.control.backup_records import Backup, BackupState
from cargohold.control.model import (
    RESTORE_FAILED,
    EventKind,
    Operation,
    OperationKind,
    OperationState,
    Volume,
)
from cargohold.control.repository import Repository, now
from cargohold.control.service_keys import ENCRYPTION_LABEL
from cargohold.encryption import layout
from cargohold.errors import NotFound


def backup_size(info: dict[str, Any], default: int) -> int:
    """The size users see of the volume a backup (its repository ``info``) holds: the
    repository holds what the replicas hold, so an encrypted volume's backup is of its
    plain (stored) volume, 65/64 of the size its users see; a restore of it must get the
    size of its source, not grow by 1.6 % each time (issue 19)."""
    size = info.get("size")
    if not isinstance(size, int):
        return default
    if ENCRYPTION_LABEL in dict(info.get("labels") or {}):
        return layout.logical_size(size)
    return size


async def follow_backup(repo: Repository, op: Operation) -> None:
    """The backup record of a BACKUP operation, after each report of it."""
    bid = op.args.get("backup")
    if op.kind is not OperationKind.BACKUP or not isinstance(bid, str):
        return

    before: list[BackupState] = []

    def change(b: Backup) -> Backup | None:
        before[:] = [b.state]
        if b.state is BackupState.DELETING:
            return None
        if op.state is OperationState.RUNNING:
            if b.state is BackupState.RUNNING and b.progress == op.progress:
                return None
            b.state, b.progress = BackupState.RUNNING, op.progress
        elif op.state is OperationState.SUCCEEDED:
            b.state, b.progress, b.error = BackupState.SUCCEEDED, 1.0, ""
            b.info = dict(op.result)
            b.repository_id = str(op.result.get("id") or "")
            b.size_bytes = backup_size(op.result, b.size_bytes)
            b.finished = op.finished_at or now()
            if not b.repository_id:  # an engine that did not say: never "succeeded" unnamed
                b.state, b.error = BackupState.FAILED, "the engine reported no backup id"
        elif op.state is OperationState.FAILED:
            b.state, b.error, b.finished = BackupState.FAILED, op.error, op.finished_at or now()
        else:
            return None
        return b

    try:
        b = await repo.update_backup(bid, change)
    except NotFound:
        return
    ended = (BackupState.SUCCEEDED, BackupState.FAILED)
    if b.state in ended and before and before[0] not in ended:  # once, when it ends
        ok = b.state is BackupState.SUCCEEDED
        await repo.add_event(
            EventKind.BACKUP_DONE if ok else EventKind.BACKUP_FAILED,
            f"backup {b.id} to target {b.target} "
            + (f"done ({b.size_bytes} bytes)" if ok else f"failed: {b.error}"),
            volume=b.volume,
        )


async def finish_restore(repo: Repository, op: Operation) -> None:
    """A finished RESTORE: the volume is usable, or failed for good."""
    ok = op.state is OperationState.SUCCEEDED

    def restored(v: Volume) -> Volume:
        v.initialized = ok or v.initialized
        v.error = "" if ok else f"{RESTORE_FAILED}{op.error or 'no reason given'}"
        return v

    try:
        await repo.update_volume(op.volume, restored)
    except NotFound:
        pass


async def fail_backups_of_snapshot(repo: Repository, volume: str, snapshot: str, why: str) -> None:
    """The snapshot a backup waits for failed: so does the backup (it would wait forever)."""
    for op in await repo.operations(volume):
        if op.done or op.kind is not OperationKind.BACKUP or op.args.get("snapshot") != snapshot:
            continue
        error = f"its snapshot {snapshot} failed: {why}"

        def failed(o: Operation, error: str = error) -> Operation | None:
            if o.done:
                return None
            o.state, o.error, o.finished_at = OperationState.FAILED, error, now()
            return o

        done = await repo.update_operation(op.id, failed)
        await follow_backup(repo, done)
