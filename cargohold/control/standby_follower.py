"""The standby follower: carries out standby.py's decisions for every standby volume.

Run by the leading manager in a loop of its own (``Manager.follow_forever``, every
``FOLLOW_TICK`` seconds), apart from the reconcile pass so that a slow or unreachable target
never delays the reconcilers; tests step it with ``run_once()``. Per standby and pass: see
how its running operation ended (``standby.finish``); when ``standby_poll_interval`` has
passed, poll the target (ONE GET of the catalog, ``Repository.backups``; no LIST) and refresh
its pin (one PUT, only when what it pins changed or a third of ``standby_pin_ttl`` passed);
then take ``standby.next_step`` and start its operation (RESTORE with ``base``, a snapshot,
a revert) through the same records any operation uses. An apply starts only on a standby
that is not attached (``_reserve``): one attached read-only for inspection keeps serving its
last complete backup, and the follower waits until it is detached. Each target call runs in a thread
(service_backups.py's ``_open``); an unreachable target is recorded (``poll_error``) and the
lag grows until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from cargohold.control import key_generations as gens
from cargohold.control.model import (
    OperationKind,
    OperationState,
    Snapshot,
    SnapshotState,
    Standby,
    StandbyState,
    Volume,
)
from cargohold.control.service_backups import volume_uid
from cargohold.control.service_keys import ENCRYPTION_LABEL, encryption_of_label
from cargohold.control.standby import (
    OpState,
    SourceBackup,
    Step,
    behind,
    finish,
    next_step,
    source_backups,
)
from cargohold.errors import CargoholdError, InvalidArgument, NotFound

if TYPE_CHECKING:
    from cargohold.control.service import Service

log = logging.getLogger("cargohold.manager")

KEY_ERROR = "standby apply stopped: "  # the volume's error while a key is missing
FOLLOW_TICK = 1.0  # seconds between passes (cheap: records only, targets when due)


class StandbyFollower:
    def __init__(self, service: Service) -> None:
        self.s = service
        self.repo = service.repo
        self._pins: dict[str, tuple[tuple[str, ...], float]] = {}  # volume -> (pinned, when)
        self._tried: dict[str, float] = {}  # volume -> when its target was last asked
        self.polls = 0  # catalog reads (tests and the benchmark count them)
        self._labels: dict[str, dict[str, str]] = {}  # volume -> backup id -> its key label
        self._key_failed: dict[str, float] = {}  # volume -> when its keys last failed

    async def run_once(self, now: float | None = None) -> None:
        for vol in await self.repo.volumes():
            sb = vol.standby
            if sb is None or vol.deleting or vol.released or sb.state is StandbyState.ACTIVE:
                continue
            try:
                await self._step(vol, sb, time.time() if now is None else now)
            except CargoholdError as e:
                log.warning("standby %s: %s", vol.name, e)

    # --- one standby -------------------------------------------------------------------
    async def _step(self, vol: Volume, sb: Standby, now: float) -> None:
        op = await self._op_state(vol.name, sb)
        new = finish(sb, op)
        if new.applied_snapshot != sb.applied_snapshot and sb.applied_snapshot:
            await self._drop_snapshot(vol.name, sb.applied_snapshot)
        if new.phase != sb.phase:
            op = "none"
        if new.state is not StandbyState.ACTIVATING and (
            now - self._tried.get(vol.name, 0.0) >= self.s.settings.standby_poll_interval
        ):
            new = await self._poll(vol, new, now)
        step = next_step(new, _newest(new), op)
        if step.kind == "apply" and not await self._keys_ready(vol, sb, step, now):
            step = Step("wait")  # a key this cluster cannot use: the volume's error says which
        if step.kind == "apply" and not await self._reserve(vol.name):
            step = Step("wait")  # attached read-only: it serves the last complete backup
        if step.kind != "wait":
            new = await self._carry_out(vol, new, step, now)
        if new != sb:
            await self._save(vol.name, new)

    async def _op_state(self, volume: str, sb: Standby) -> OpState:
        if not sb.operation:
            return "none"
        try:
            op = await self.repo.operation(sb.operation)
        except NotFound:
            return "failed"  # forgotten (operation_retention): its outcome is unknown
        if op.state is OperationState.SUCCEEDED:
            return "succeeded"
        if op.state is OperationState.FAILED:
            log.warning("standby %s: %s %s failed: %s", volume, sb.phase, op.id, op.error)
            return "failed"
        return "running"

    async def _poll(self, vol: Volume, sb: Standby, now: float) -> Standby:
        """One GET of the target's catalog (and the pin when due); the record refreshed."""
        self._tried[vol.name] = now
        out = sb.model_copy(deep=True)
        try:
            repo = await self.s._open(await self.repo.backup_target(sb.target))
            infos = [i.to_dict() for i in await asyncio.to_thread(repo.backups)]
            self.polls += 1
            await self._pin(vol, repo, out, now)
        except CargoholdError as e:
            out.poll_error = str(e)
            return out
        mine = source_backups(infos, out)
        self._labels[vol.name] = key_labels(infos, {b.id for b in mine})
        out.poll_error, out.last_poll = "", now
        if mine:
            out.newest, out.newest_created = mine[-1].id, mine[-1].created
        out.behind = behind(mine, out.applied_created, out.applied)
        return out

    async def _pin(
        self, vol: Volume, repo: Any, sb: Standby, now: float, force: bool = False
    ) -> None:
        """Pin the backups the standby holds and applies (leases.py), when that changed."""
        want = tuple(sorted({b for b in (sb.applied, sb.applying) if b}))
        had = self._pins.get(vol.name)
        ttl = self.s.settings.standby_pin_ttl
        if not want or (not force and had and had[0] == want and now - had[1] < ttl / 3):
            return
        holder = volume_uid(self.repo.cluster_id, vol)
        await asyncio.to_thread(repo.pin, holder, list(want), ttl)
        self._pins[vol.name] = (want, now)

    async def _carry_out(self, vol: Volume, sb: Standby, step: Step, now: float) -> Standby:
        out = sb.model_copy(deep=True)
        if step.kind == "apply":
            out.applying, out.applying_created = step.backup, step.created
            # pin the backup before its apply reads it (the source's retention skips it)
            repo = await self.s._open(await self.repo.backup_target(sb.target))
            await self._pin(vol, repo, out, now, force=True)
            op = await self.s._operation(
                OperationKind.RESTORE,
                vol.name,
                {"backup": step.backup, "base": step.base, "target": sb.target},
            )
            out.phase, out.operation, out.dirty = "restore", op.id, True
            if out.state is StandbyState.FOLLOWING:
                out.state = StandbyState.APPLYING
            log.info("standby %s: applying backup %s over %s", vol.name, step.backup, step.base)
        elif step.kind == "seal":
            op = await self.s._snapshot_op(vol.name, step.snapshot, {"dr-backup": step.backup})
            out.phase, out.operation, out.snapshot = "seal", op.id, step.snapshot
            try:
                res = (await self.repo.operation(sb.operation)).result
                out.last_apply = {k: v for k, v in res.items() if isinstance(v, int | float)}
            except NotFound:
                pass
        elif step.kind == "revert":
            op = await self.s._operation(
                OperationKind.SNAPSHOT_REVERT, vol.name, {"name": step.snapshot}
            )
            out.phase, out.operation = "revert", op.id
            log.info(
                "standby %s: reverting to %s (the last complete state)", vol.name, step.snapshot
            )
        elif step.kind == "activate":
            out.state, out.activated_at = StandbyState.ACTIVE, now
            try:
                repo = await self.s._open(await self.repo.backup_target(sb.target))
                await asyncio.to_thread(repo.unpin, volume_uid(self.repo.cluster_id, vol))
            except CargoholdError as e:  # the pin expires on its own (standby_pin_ttl)
                log.warning("standby %s: its pin stays until it expires: %s", vol.name, e)
            self._pins.pop(vol.name, None)
            log.info("standby %s: active (holds backup %s)", vol.name, out.applied)
        return out

    async def _keys_ready(self, vol: Volume, sb: Standby, step: Step, now: float) -> bool:
        """The standby's record holds every key generation ``step``'s backup needs (merged
        in now if not), before the apply reserves the standby and its engine starts. A
        failure is retried once per poll interval (a KMS is not asked every pass)."""
        if vol.encryption is None or not step.backup:
            return True
        failed = self._key_failed.get(vol.name)
        if failed and now - failed < self.s.settings.standby_poll_interval:
            return False
        try:
            await self._keys_for(vol, sb, step.backup)
        except CargoholdError as e:
            self._key_failed[vol.name] = now
            log.warning("standby %s: %s", vol.name, e)
            return False
        self._key_failed.pop(vol.name, None)
        return True

    async def _keys_for(self, vol: Volume, sb: Standby, backup: str) -> None:
        """Merge the key generations backup ``backup``'s label carries into the standby's
        record (the source may have rotated its data key since), each new one unwrapped once
        here to prove this cluster holds its KEK. Raises (the apply does not start; the
        volume's ``error`` says why) when one cannot be: never a silent skip."""
        if vol.encryption is None:
            return
        labels = self._labels.get(vol.name, {})
        if backup not in labels:  # e.g. a manager restarted: read the catalog once more
            repo = await self.s._open(await self.repo.backup_target(sb.target))
            infos = [i.to_dict() for i in await asyncio.to_thread(repo.backups)]
            labels = self._labels[vol.name] = key_labels(infos, {backup})
        text = labels.get(backup)
        if text is None:
            err = f"backup {backup} carries no key record (it is not of an encrypted volume)"
            await self._key_error(vol.name, backup, InvalidArgument(err))
        try:
            merged, added = gens.merge_for_standby(vol.encryption, encryption_of_label(text or ""))
            if added:
                probe = gens.with_keys(merged, [k for k in merged.keys if k.generation in added])
                await self.s.unwrap_all(vol.name, probe)
        except CargoholdError as e:
            await self._key_error(vol.name, backup, e)
            raise
        if merged == vol.encryption:
            return

        def change(v: Volume) -> Volume:
            v.encryption = merged
            if v.error.startswith(KEY_ERROR):
                v.error = ""
            return v

        await self.repo.update_volume(vol.name, change)
        vol.encryption = merged
        log.info("standby %s: holds data key generation(s) %s of its source now", vol.name, added)

    async def _key_error(self, name: str, backup: str, e: CargoholdError) -> None:
        msg = f"{KEY_ERROR}backup {backup} needs a data key this cluster cannot use: {e}"

        def change(v: Volume) -> Volume | None:
            if v.error == msg:
                return None
            v.error = msg
            return v

        await self.repo.update_volume(name, change)
        raise type(e)(msg) from None

    async def _reserve(self, name: str) -> bool:
        """Mark the standby ``dirty`` before an apply starts, unless it is attached (read-only,
        service_volumes.py ``standby_attachable``): one atomic change of the record, so an
        attach and an apply never both go ahead (the attach refuses a dirty standby). While
        attached the standby applies nothing: its reader sees one complete backup throughout,
        and it catches up once detached."""
        free: list[bool] = []

        def change(v: Volume) -> Volume | None:
            free[:] = [v.attach_node is None and v.standby is not None]
            if not free[0] or v.standby is None or v.standby.dirty:
                return None
            v.standby = v.standby.model_copy(update={"dirty": True})
            return v

        await self.repo.update_volume(name, change)
        return bool(free and free[0])

    async def _drop_snapshot(self, volume: str, name: str) -> None:
        """The previous seal's snapshot: no longer the complete state, deleted."""

        def deleting(s: Snapshot) -> Snapshot:
            s.state = SnapshotState.DELETING
            return s

        try:
            await self.repo.update_snapshot(volume, name, deleting)
        except NotFound:
            return
        await self.s._operation(OperationKind.SNAPSHOT_DELETE, volume, {"name": name})

    async def _save(self, name: str, new: Standby) -> None:
        def change(v: Volume) -> Volume:
            cur = v.standby
            if cur is None:
                return v
            keep = new.model_copy()
            if cur.state is StandbyState.ACTIVATING and keep.state in (
                StandbyState.FOLLOWING,
                StandbyState.APPLYING,
            ):
                keep.state = StandbyState.ACTIVATING  # asked meanwhile (activate)
            v.standby = keep
            if keep.state is StandbyState.ACTIVE or (not keep.dirty and keep.applied):
                if v.error.startswith("restore failed: "):
                    v.error = ""  # an apply that failed was reverted
            return v

        await self.repo.update_volume(name, change)


def key_labels(infos: list[dict[str, Any]], ids: set[str]) -> dict[str, str]:
    """Backup id -> its ENCRYPTION_LABEL, of the backups ``ids`` that carry one."""
    out: dict[str, str] = {}
    for i in infos:
        label = (i.get("labels") or {}).get(ENCRYPTION_LABEL)
        if i.get("id") in ids and label is not None:
            out[str(i["id"])] = str(label)
    return out


def _newest(sb: Standby) -> SourceBackup | None:
    if not sb.newest:
        return None
    return SourceBackup(sb.newest, sb.newest_created, 0, sb.source_volume_id)
