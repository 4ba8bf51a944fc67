"""Recurring jobs: their records, their per-volume run state, and where both are stored.

A ``RecurringJob`` takes a snapshot or a backup of every volume it selects on a cron
schedule, then applies its retention policy to what it made (retention.py, schedule.py).
Records live in the state store beside the others (control/model.py's table):

    /jobs/<job>                   RecurringJob  the job, as created through the API
    /jobruns/<job>/<volume>       JobRun        when it last ran on the volume, how it went,
                                                when it is due next, the run in flight

A job selects a volume (of its tenant; a job without a tenant: any volume) when the volume
is named in ``selector.volumes``, when every label of ``selector.labels`` is on the volume,
or when the volume carries the label ``recurring-job.cargohold.io/<job>: enabled`` (what a
StorageClass's ``recurringJobs`` parameter puts on each new volume). What a job makes is
labelled ``cargohold.io/job: <job>``; retention only ever touches objects with that label.
Deleting a job deletes its run state, never its snapshots or backups.

``JobStore`` reads and writes these records over the manager's ``StateStore`` (the API's
calls in service_jobs.py write jobs; only the runner, job_runner.py, writes runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from cargohold.control.model import Record, check_name, name_field
from cargohold.control.retention import Policy, check_policy
from cargohold.control.schedule import check_cron
from cargohold.control.state.base import Compare, Delete, Put, StateStore
from cargohold.errors import AlreadyExists, Busy, InvalidArgument, NotFound, StateStoreDamaged

JOB_LABEL = "cargohold.io/job"  # on every snapshot and backup a job makes: the job's name
VOLUME_LABEL_PREFIX = "recurring-job.cargohold.io/"  # + job name = "enabled": selects it
ENABLED = "enabled"
HISTORY_KEPT = 10  # runs remembered per (job, volume)
JOBS = "/jobs/"
RUNS = "/jobruns/"


def job_key(name: str) -> str:
    return f"{JOBS}{name}"


def run_key(job: str, volume: str) -> str:
    return f"{RUNS}{job}/{volume}"


def volume_label(job: str) -> str:
    """The label that attaches ``job`` to a volume (its value: ``enabled``)."""
    return f"{VOLUME_LABEL_PREFIX}{job}"


Count = StrictInt | None


class Retention(Record):
    """What a job keeps of what it made, per volume (retention.py; counts >= 1)."""

    keep_last: Count = Field(None, ge=1, le=100_000, description="the N newest")
    keep_within: StrictFloat | None = Field(
        None, gt=0, description="seconds: everything made that long before the newest"
    )
    hourly: Count = Field(None, ge=1, le=100_000)
    daily: Count = Field(None, ge=1, le=100_000)
    weekly: Count = Field(None, ge=1, le=100_000)
    monthly: Count = Field(None, ge=1, le=100_000)
    yearly: Count = Field(None, ge=1, le=100_000)

    def policy(self) -> Policy:
        return Policy(
            keep_last=self.keep_last,
            keep_within=float(self.keep_within) if self.keep_within is not None else None,
            hourly=self.hourly,
            daily=self.daily,
            weekly=self.weekly,
            monthly=self.monthly,
            yearly=self.yearly,
        )


class JobSelector(Record):
    volumes: list[str] = Field(default_factory=list, description="volumes by name")
    labels: dict[str, str] = Field(
        default_factory=dict, description="volumes carrying every one of these labels"
    )


class JobSpec(BaseModel):
    """What the user says about a job (the body of ``POST /api/v1/jobs``)."""

    model_config = {"extra": "forbid"}

    name: str = name_field()
    kind: Literal["snapshot", "backup"]
    cron: str = Field(description="five fields, UTC: minute hour day-of-month month weekday")
    retention: Retention
    target: str | None = name_field(
        default=None, description="backups: the backup target's name (snapshots: none)"
    )
    selector: JobSelector = Field(default_factory=JobSelector)
    max_per_node: StrictInt = Field(
        2, ge=1, le=1000, description="runs in flight at once on one node (all jobs)"
    )
    max_per_target: StrictInt = Field(
        4, ge=1, le=1000, description="backups in flight at once to one target (all jobs)"
    )
    deadline: StrictFloat = Field(
        3600.0,
        gt=0,
        le=7 * 86400,
        description="seconds a run may take; past it the run is failed and the next may start",
    )
    max_jitter: StrictFloat = Field(
        60.0,
        ge=0,
        le=86400,
        description="seconds: each volume's runs start up to this late (deterministic per "
        "volume; at most a quarter of the schedule's period)",
    )
    enabled: StrictBool = True
    tenant: str | None = name_field(
        default=None,
        description="whose job (default: the caller's tenant; only the admin names one); it "
        "selects only that tenant's volumes",
    )

    def check(self) -> None:
        """InvalidArgument when the parts do not fit together (the rest is pydantic's)."""
        check_name(self.name, "job name")
        check_cron(self.cron)
        check_policy(self.retention.policy())
        if self.kind == "backup" and not self.target:
            raise InvalidArgument(f"job {self.name}: a backup job needs a target")
        if self.kind == "snapshot" and self.target:
            raise InvalidArgument(f"job {self.name}: a snapshot job takes no target")
        for v in self.selector.volumes:
            check_name(v, "volume name")


class RecurringJob(JobSpec):
    """A job as stored: its spec, when it was made, when ``run-now`` was last asked."""

    created_at: float = 0.0
    run_now_at: float = 0.0  # every selected volume runs once more when this is newer

    def selects(self, name: str, labels: Mapping[str, str], tenant: str | None) -> bool:
        if self.tenant is not None and tenant != self.tenant:
            return False
        if name in self.selector.volumes or labels.get(volume_label(self.name)) == ENABLED:
            return True
        sel = self.selector.labels
        return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


RunResult = Literal["", "running", "succeeded", "failed"]


class RunInFlight(Record):
    operation: str  # the operation the run waits for
    object: str  # the snapshot's name or the backup's id
    node: str = ""  # where it runs (caps)
    target: str = ""  # backups: the target (caps)
    started_at: float
    deadline_at: float


class RunRecord(Record):
    """One run that ended, as the job's history shows it."""

    slot: float  # the cron slot it ran for (0: run-now)
    started_at: float
    ended_at: float
    result: Literal["succeeded", "failed"]
    object: str = ""
    error: str = ""
    deleted: list[str] = Field(default_factory=list)  # what retention deleted after it


class JobRun(Record):
    job: str
    volume: str
    last_slot: float = 0.0  # the newest cron slot a run was started for
    next_due: float = 0.0
    run_now_seen: float = 0.0  # the job's run_now_at this volume ran for
    running: RunInFlight | None = None
    last_result: RunResult = ""
    last_error: str = ""
    last_started: float = 0.0
    last_ended: float = 0.0
    waiting: str = ""  # why a due run has not started (a concurrency cap), else ""
    runs: int = 0
    failures: int = 0
    history: list[RunRecord] = Field(default_factory=list)  # newest last, HISTORY_KEPT

    def ended(self, rec: RunRecord) -> None:
        self.running = None
        self.last_result = rec.result
        self.last_error = rec.error
        self.last_ended = rec.ended_at
        self.runs += 1
        self.failures += rec.result == "failed"
        self.history = [*self.history, rec][-HISTORY_KEPT:]


def _parse(model: type[Any], key: str, value: bytes) -> Any:
    try:
        return model.model_validate_json(value)
    except ValidationError as e:
        raise StateStoreDamaged(
            f"state store record {key} is damaged: {e.errors()[0]['msg']} (fix or delete the "
            "record; see docs/operations.md)",
            key=key,
            model=model,
        ) from None


async def check_job_labels(store: JobStore, labels: Mapping[str, str], tenant: str | None) -> None:
    """InvalidArgument unless every ``recurring-job.cargohold.io/<job>`` label of a new volume
    names a job that exists and may select it (the provider's, or the volume's tenant's),
    with the value ``enabled``."""
    for key, value in labels.items():
        if not key.startswith(VOLUME_LABEL_PREFIX):
            continue
        name = key[len(VOLUME_LABEL_PREFIX) :]
        if value != ENABLED:
            raise InvalidArgument(f"label {key}={value!r}: the value must be {ENABLED!r}")
        try:
            job = await store.job(name)
        except NotFound:
            raise InvalidArgument(f"label {key}: there is no recurring job {name!r}") from None
        if job.tenant is not None and job.tenant != tenant:
            raise InvalidArgument(f"label {key}: there is no recurring job {name!r}")


class JobStore:
    """Jobs and their runs in the state store (one write each; CAS for job updates)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def jobs(self) -> list[RecurringJob]:
        return [_parse(RecurringJob, e.key, e.value) for e in await self.store.range(JOBS)]

    async def job(self, name: str) -> RecurringJob:
        e = await self.store.get(job_key(name))
        if e is None:
            raise NotFound(f"job {name} not found")
        job: RecurringJob = _parse(RecurringJob, e.key, e.value)
        return job

    async def create(self, job: RecurringJob) -> None:
        key = job_key(job.name)
        if not await self.store.txn([Compare(key, 0)], [Put(key, job.model_dump_json().encode())]):
            raise AlreadyExists(f"job {job.name} already exists")

    async def update(
        self, name: str, change: Callable[[RecurringJob], RecurringJob]
    ) -> RecurringJob:
        key = job_key(name)
        for _ in range(64):
            e = await self.store.get(key)
            if e is None:
                raise NotFound(f"job {name} not found")
            new = change(_parse(RecurringJob, key, e.value))
            if await self.store.txn(
                [Compare(key, e.mod_revision)], [Put(key, new.model_dump_json().encode())]
            ):
                return new
        raise Busy(f"job {name}: too many concurrent changes, try again")

    async def delete(self, name: str) -> None:
        """The job and its run state, in one transaction (its snapshots and backups stay)."""
        ops: list[Put | Delete] = [Delete(job_key(name))]
        ops += [Delete(e.key) for e in await self.store.range(f"{RUNS}{name}/")]
        await self.store.txn([], ops)

    async def runs(self, job: str | None = None) -> list[JobRun]:
        prefix = f"{RUNS}{job}/" if job is not None else RUNS
        return [_parse(JobRun, e.key, e.value) for e in await self.store.range(prefix)]

    async def put_run(self, run: JobRun) -> None:
        await self.store.put(run_key(run.job, run.volume), run.model_dump_json().encode())

    async def put_runs(self, runs: list[JobRun]) -> None:
        """Several run states in one transaction (a pass's changes, in batches)."""
        await self.store.txn(
            [], [Put(run_key(r.job, r.volume), r.model_dump_json().encode()) for r in runs]
        )

    async def delete_run(self, job: str, volume: str) -> None:
        await self.store.delete(run_key(job, volume))
