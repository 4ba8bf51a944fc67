"""The manager API's routes about recurring snapshot and backup jobs: ``/api/v1/jobs...``
(permissions ``jobs:read`` and ``jobs:write``; a tenant sees only its own jobs). What a job
is and does: control/jobs.py, control/job_runner.py, docs/jobs.md.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import Field

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import requires
from cargohold.control.jobs import JobRun, JobSpec, RecurringJob
from cargohold.control.service import Service
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission

JobsRead = Annotated[Identity, Depends(requires(Permission.JOBS_READ))]
JobsWrite = Annotated[Identity, Depends(requires(Permission.JOBS_WRITE))]


class JobView(RecurringJob):
    """A job and, per volume it selected, its run state (last run, result, next due)."""

    runs: list[JobRun] = Field(default_factory=list)


def add_routes(app: FastAPI, s: Service) -> None:
    @app.get("/api/v1/jobs", tags=["jobs"], response_model=list[JobView], responses=errors())
    async def jobs(who: JobsRead) -> list[JSON]:
        return await s.jobs(who)

    @app.post(
        "/api/v1/jobs",
        status_code=201,
        tags=["jobs"],
        response_model=JobView,
        responses=errors(400, 404, 409, body=True),
    )
    async def create_job(body: JobSpec, who: JobsWrite) -> JSON:
        """A recurring snapshot or backup job (docs/jobs.md). 400: a bad cron schedule, a
        retention policy that keeps nothing, a backup job without a target."""
        return await s.create_job(body, who)

    @app.get(
        "/api/v1/jobs/{job}", tags=["jobs"], response_model=JobView, responses=errors(404, 422)
    )
    async def job(job: Name, who: JobsRead) -> JSON:
        return await s.job(job, who)

    @app.delete(
        "/api/v1/jobs/{job}", tags=["jobs"], response_model=JobView, responses=errors(404, 422)
    )
    async def delete_job(job: Name, who: JobsWrite) -> JSON:
        """The job goes; the snapshots and backups it made stay."""
        return await s.delete_job(job, who)

    @app.post(
        "/api/v1/jobs/{job}/run",
        status_code=202,
        tags=["jobs"],
        response_model=JobView,
        responses=errors(404, 422),
    )
    async def run_job(job: Name, who: JobsWrite) -> JSON:
        """Run the job once on every volume it selects, now (its caps still apply)."""
        return await s.run_job(job, who)
