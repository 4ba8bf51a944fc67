"""``Service``'s calls on recurring jobs (jobs.py): create, list, get, delete, run now.

A tenant's identity sees and changes only its own tenant's jobs (a job of another tenant is
answered NotFound, as one that does not exist); the admin sees all. The runner
(job_runner.py) carries the jobs out; these calls only write the records (and ``run_job``
stamps ``run_now_at``, which the runner answers on its next pass, woken at once).
"""

from __future__ import annotations

import logging
from typing import Any

from cargohold.control.jobs import JobRun, JobSpec, JobStore, RecurringJob
from cargohold.control.repository import now
from cargohold.control.service_base import ServiceBase
from cargohold.control.tenancy import owner_for_create
from cargohold.errors import NotFound
from cargohold.security.identity import Identity
from cargohold.security.policy import sees

log = logging.getLogger("cargohold.manager")


def job_view(job: RecurringJob, runs: list[JobRun]) -> dict[str, Any]:
    """The API's JSON of a job: its record and, per volume it ran on, its run state."""
    return {**job.model_dump(), "runs": [r.model_dump() for r in runs]}


class JobCalls(ServiceBase):
    @property
    def job_store(self) -> JobStore:
        return JobStore(self.repo.store)

    async def _job(self, name: str, who: Identity | None) -> RecurringJob:
        job = await self.job_store.job(name)
        if who is not None and not sees(who, job.tenant):
            raise NotFound(f"job {name} not found")
        return job

    async def jobs(self, who: Identity | None = None) -> list[dict[str, Any]]:
        runs: dict[str, list[JobRun]] = {}
        for r in await self.job_store.runs():
            runs.setdefault(r.job, []).append(r)
        return [
            job_view(j, runs.get(j.name, []))
            for j in await self.job_store.jobs()
            if who is None or sees(who, j.tenant)
        ]

    async def job(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        job = await self._job(name, who)
        return job_view(job, await self.job_store.runs(name))

    async def create_job(self, req: JobSpec, who: Identity | None = None) -> dict[str, Any]:
        req.check()
        owner = owner_for_create(who, req.tenant)
        if owner is not None:
            await self.repo.tenant(owner)  # NotFound: the tenant must exist first
        job = RecurringJob(**{**req.model_dump(), "tenant": owner, "created_at": now()})
        await self.job_store.create(job)
        log.info("recurring job %s created: %s on %r", job.name, job.kind, job.cron)
        self.kick.set()
        return job_view(job, [])

    async def delete_job(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """The job and its run state go; its snapshots and backups stay."""
        job = await self._job(name, who)
        runs = await self.job_store.runs(name)
        await self.job_store.delete(name)
        log.info("recurring job %s deleted (what it made is kept)", name)
        return job_view(job, runs)

    async def run_job(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """Run the job once more on every volume it selects, now (caps still apply)."""
        await self._job(name, who)
        t = now()

        def stamp(j: RecurringJob) -> RecurringJob:
            j.run_now_at = max(t, j.run_now_at + 1e-6)
            return j

        job = await self.job_store.update(name, stamp)
        self.kick.set()
        return job_view(job, await self.job_store.runs(name))
