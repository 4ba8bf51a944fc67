"""The recurring-job runner: starts the snapshots and backups that jobs' schedules make due,
follows them, records how each run went, and applies each job's retention.

``JobRunner.run_once()`` is one pass (tests step it with a fake clock and fake actions); the
manager that leads runs it after its reconcilers, every ``reconcile_interval``
(control/manager.py). One pass, for every (job, volume) the job selects (jobs.py):

1. a run in flight is followed through its operation: succeeded, it is recorded and the
   job's retention is applied to the job's objects of that volume (labelled
   ``cargohold.io/job=<job>``; pending and deleting ones are left out); failed, it is
   recorded; past its ``deadline``, it is recorded failed ("deadline exceeded") and
   forgotten (its operation is left to finish or fail on its own), so a stuck run never
   blocks the next;
2. otherwise, if a slot is due (schedule.py: once for the newest missed slot, never once per
   missed slot) or ``run-now`` was asked: start the run, unless the node's (or the target's)
   runs in flight already reach the job's cap (``max_per_node``, ``max_per_target``, counted
   over every job): then it waits (``JobRun.waiting`` says why) and starts in a later pass.

Every outcome is logged and kept in the (job, volume)'s ``JobRun`` (the last ten runs).
A pass that finds nothing due does no cron arithmetic and writes nothing; the run states a
pass changes are written in transactions of ``WRITE_BATCH`` (a manager that dies inside a
pass may so forget up to that many runs it started: they run again, and retention, which
goes by the job's label, still counts what they made).
Run states of deleted jobs and volumes are dropped; what the jobs made stays.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cargohold.control.backup_records import BackupState
from cargohold.control.job_actions import JobActions, VolumeFacts
from cargohold.control.jobs import (
    JOB_LABEL,
    JobRun,
    JobStore,
    RecurringJob,
    RunInFlight,
    RunRecord,
)
from cargohold.control.retention import Item, to_delete
from cargohold.control.schedule import jitter, jitter_bound, plan
from cargohold.errors import CargoholdError, NotFound, StateStoreDamaged

log = logging.getLogger("cargohold.manager")
READY_SNAPSHOT = "ready"
WRITE_BATCH = 200  # run states written per state-store transaction
READY_BACKUP = frozenset({BackupState.SUCCEEDED.value})  # a backup's done state


def object_name(job: str, t: float) -> str:
    """A snapshot name for ``job``'s run at ``t``: <job>-<yyyymmdd-hhmmss>-<4 hex> (<= 63)."""
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{job[:40].rstrip('-.')}-{stamp}-{secrets.token_hex(2)}"


def _idle(job: RecurringJob, vol: VolumeFacts, run: JobRun, now: float) -> bool:
    """Nothing to do for (job, volume) in this pass: no run in flight, none asked, none due."""
    return (
        run.running is None
        and job.run_now_at <= run.run_now_seen
        and now < run.next_due
        and vol.usable
    )


class JobRunner:
    def __init__(
        self, jobs: JobStore, actions: JobActions, clock: Callable[[], float] = time.time
    ) -> None:
        self.jobs, self.actions, self.clock = jobs, actions, clock

    async def run_once(self) -> None:
        now = self.clock()
        jobs = {j.name: j for j in await self.jobs.jobs()}
        runs = {(r.job, r.volume): r for r in await self.jobs.runs()}
        if not jobs and not runs:
            return  # no jobs: not even the volumes are read
        vols = await self.actions.volumes()
        names = {v.name for v in vols}
        nodes: Counter[str] = Counter()
        targets: Counter[str] = Counter()
        for r in runs.values():
            if r.running is not None:
                nodes[r.running.node] += 1
                targets[r.running.target] += 1
        for name, volume in runs:
            if name not in jobs or volume not in names:
                await self.jobs.delete_run(name, volume)
        changed: list[JobRun] = []
        try:
            for job in sorted(jobs.values(), key=lambda j: j.name):
                bound = jitter_bound(job.cron, job.max_jitter, now)
                for vol in vols:
                    if not job.selects(vol.name, vol.labels, vol.tenant):
                        continue
                    run = runs.get((job.name, vol.name))
                    if run is None:
                        run = JobRun(job=job.name, volume=vol.name, last_slot=job.created_at)
                    elif _idle(job, vol, run, now):
                        continue  # the common case: no cron arithmetic, no copy, no write
                    try:
                        new = await self._step(
                            job, vol, run.model_copy(deep=True), now, bound, nodes, targets
                        )
                    except StateStoreDamaged:
                        raise
                    except CargoholdError as e:
                        log.warning("job %s, volume %s: %s", job.name, vol.name, e)
                        continue
                    if new != run:
                        changed.append(new)
                    if len(changed) >= WRITE_BATCH:
                        await self.jobs.put_runs(changed)
                        changed = []
        finally:
            if changed:
                await self.jobs.put_runs(changed)

    # --- one (job, volume) ------------------------------------------------------------------
    async def _step(
        self,
        job: RecurringJob,
        vol: VolumeFacts,
        run: JobRun,
        now: float,
        bound: float,
        nodes: Counter[str],
        targets: Counter[str],
    ) -> JobRun:
        asked = job.run_now_at > run.run_now_seen
        was = run.running
        if was is not None:
            if not await self._follow(job, run, now):
                return run  # still running, within its deadline: the next slot waits
            nodes[was.node] -= 1  # ended: no longer in flight
            targets[was.target] -= 1
        offset = jitter(job.name, vol.name, bound)
        p = plan(job.cron, run.last_slot, now, offset)
        # due but not started below (a cap, an unusable volume): still due, next pass
        run.next_due = now if p.due and job.enabled else p.next_due
        if not (asked or (p.due and job.enabled)) or not vol.usable:
            run.waiting = "" if vol.usable else "the volume is being deleted or created"
            return run
        target = job.target or ""
        if nodes[vol.node] >= job.max_per_node:
            run.waiting = f"node {vol.node or '?'} has {nodes[vol.node]} runs in flight"
            return run
        if job.kind == "backup" and targets[target] >= job.max_per_target:
            run.waiting = f"target {target} has {targets[target]} backups in flight"
            return run
        run.waiting = ""
        run.next_due = p.next_due
        if asked:
            run.run_now_seen = job.run_now_at
        if p.due:
            run.last_slot = p.slot or now
            if p.missed:
                log.info(
                    "job %s, volume %s: %d missed run(s) caught up once",
                    job.name,
                    vol.name,
                    p.missed,
                )
        run.last_started = now
        try:
            op, obj = await self._start(job, vol, now)
        except StateStoreDamaged:
            raise
        except CargoholdError as e:
            self._ended(
                job,
                run,
                RunRecord(
                    slot=run.last_slot, started_at=now, ended_at=now, result="failed", error=str(e)
                ),
            )
            return run
        run.running = RunInFlight(
            operation=op,
            object=obj,
            node=vol.node,
            target=target,
            started_at=now,
            deadline_at=now + float(job.deadline),
        )
        run.last_result = "running"
        nodes[vol.node] += 1
        targets[target] += 1
        log.info("job %s: %s %s of volume %s started", job.name, job.kind, obj, vol.name)
        return run

    async def _start(self, job: RecurringJob, vol: VolumeFacts, now: float) -> tuple[str, str]:
        labels = {JOB_LABEL: job.name}
        if job.kind == "snapshot":
            name = object_name(job.name, now)
            op = await self.actions.create_snapshot(vol.name, name, labels)
            return str(op["id"]), name
        op = await self.actions.create_backup(vol.name, job.target or "", labels)
        backup = (op.get("args") or {}).get("backup") or op.get("backup") or ""
        return str(op["id"]), str(backup)

    async def _follow(self, job: RecurringJob, run: JobRun, now: float) -> bool:
        """Follow the run in flight; True when it ended (recorded)."""
        r = run.running
        assert r is not None
        try:
            op: dict[str, Any] | None = await self.actions.operation(r.operation)
        except NotFound:
            op = None
        rec = RunRecord(
            slot=run.last_slot,
            started_at=r.started_at,
            ended_at=now,
            result="failed",
            object=r.object,
        )
        if op is None:
            rec.error = f"operation {r.operation} is gone"
        elif op.get("state") == "succeeded":
            rec.result = "succeeded"
            if job.kind == "backup" and not r.object:
                result = op.get("result") or {}
                rec.object = str(result.get("id") or result.get("backup") or "")
        elif op.get("state") == "failed":
            rec.error = str(op.get("error") or "the operation failed")
        elif now > r.deadline_at:
            rec.error = (
                f"deadline exceeded: still {op.get('state')} after {now - r.started_at:.0f} s "
                f"(deadline {float(job.deadline):.0f} s); operation {r.operation} left to end "
                "on its own, the next run may start"
            )
        else:
            return False
        if rec.result == "succeeded":
            rec.deleted = await self._retain(job, run.volume)
        self._ended(job, run, rec)
        return True

    def _ended(self, job: RecurringJob, run: JobRun, rec: RunRecord) -> None:
        run.ended(rec)
        if rec.result == "succeeded":
            log.info(
                "job %s: %s %s of volume %s succeeded in %.1f s%s",
                job.name,
                job.kind,
                rec.object,
                run.volume,
                rec.ended_at - rec.started_at,
                f"; retention deleted {', '.join(rec.deleted)}" if rec.deleted else "",
            )
        else:
            log.warning(
                "job %s: %s of volume %s failed: %s", job.name, job.kind, run.volume, rec.error
            )

    # --- retention ----------------------------------------------------------------------
    async def _retain(self, job: RecurringJob, volume: str) -> list[str]:
        """Apply the job's retention to its objects of ``volume``; -> what it deleted.
        A deletion that fails is logged and tried again after the next run."""
        items = await self._items(job, volume)
        deleted = []
        for item in to_delete(items, job.retention.policy()):
            try:
                if job.kind == "snapshot":
                    await self.actions.delete_snapshot(volume, item.id)
                else:
                    await self.actions.delete_backup(item.id)
            except StateStoreDamaged:
                raise
            except CargoholdError as e:
                log.warning("job %s: retention could not delete %s: %s", job.name, item.id, e)
                continue
            deleted.append(item.id)
        return deleted

    async def _items(self, job: RecurringJob, volume: str) -> list[Item]:
        if job.kind == "snapshot":
            return [
                Item(s["name"], float(s.get("created_at") or 0.0), s.get("labels") or {})
                for s in await self.actions.snapshots(volume)
                if (s.get("labels") or {}).get(JOB_LABEL) == job.name
                and s.get("state") == READY_SNAPSHOT
            ]
        return [
            Item(str(b["id"]), float(b.get("created") or 0.0), b.get("labels") or {})
            for b in await self.actions.backups(volume, job.target or "")
            if (b.get("labels") or {}).get(JOB_LABEL) == job.name and b.get("state") in READY_BACKUP
        ]
