"""Recurring jobs through the manager's real ``Service`` over the simulated cluster
(sim.py): the runner with ``ServiceActions`` takes real snapshot operations to the end and
retention deletes through the ordinary snapshot-delete path; jobs are tenant-scoped; a
volume's ``recurring-job.cargohold.io/<job>`` label must name a job that exists."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.control import service_jobs
from cargohold.control.job_actions import ServiceActions
from cargohold.control.job_runner import JobRunner
from cargohold.control.jobs import JOB_LABEL, JobSpec, JobStore, volume_label
from cargohold.control.requests import TenantCreate, VolumeCreate
from cargohold.errors import InvalidArgument, NotFound, PermissionDenied
from cargohold.security.identity import Identity, Role
from tests.unit.control.sim import Sim

GiB = 1 << 30
C = "c-" + "0" * 32
A = Identity(C, Role.OPERATOR, "ann", tenant="team-a")
B = Identity(C, Role.OPERATOR, "bo", tenant="team-b")


def spec(**kw: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "hourly",
        "kind": "snapshot",
        "cron": "0 * * * *",
        "retention": {"keep_last": 2},
        "max_jitter": 0,
    }
    return JobSpec.model_validate({**base, **kw})


@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    s = Sim(monkeypatch, nodes=3)
    monkeypatch.setattr(service_jobs, "now", s.clock)
    await s.start()
    return s


async def test_a_snapshot_job_keeps_the_last_two_through_the_real_service(sim: Sim) -> None:
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.service.create_volume(VolumeCreate(name="other", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.create_job(spec(selector={"volumes": ["data"]}))
    runner = JobRunner(JobStore(sim.repo.store), ServiceActions(sim.service), sim.clock)
    made = []
    for _ in range(3):
        await sim.service.run_job("hourly")
        await runner.run_once()  # the snapshot operation is queued
        await sim.step(rounds=4)  # a maintenance engine runs it
        await runner.run_once()  # succeeded: recorded, retention applied
        await sim.step(rounds=4)  # the snapshot-delete operation runs
        run = (await sim.service.job("hourly"))["runs"][0]
        assert run["last_result"] == "succeeded", run
        made.append(run["history"][-1]["object"])
    snaps = await sim.service.snapshots("data")
    assert [s["name"] for s in snaps] == sorted(made[1:])  # the two newest
    assert all(s["labels"] == {JOB_LABEL: "hourly"} for s in snaps)
    assert run["history"][-1]["deleted"] == [made[0]]
    assert await sim.service.snapshots("other") == []  # not selected
    # deleting the job keeps its snapshots
    await sim.service.delete_job("hourly")
    assert len(await sim.service.snapshots("data")) == 2
    with pytest.raises(NotFound):
        await sim.service.job("hourly")


async def test_jobs_are_tenant_scoped(sim: Sim) -> None:
    for t in ("team-a", "team-b"):
        await sim.service.create_tenant(TenantCreate(name=t))
    mine = await sim.service.create_job(spec(name="a-hourly"), A)
    assert mine["tenant"] == "team-a"
    await sim.service.create_job(spec(name="provider"))
    with pytest.raises(PermissionDenied):
        await sim.service.create_job(spec(name="x", tenant="team-b"), A)
    assert [j["name"] for j in await sim.service.jobs(A)] == ["a-hourly"]
    assert [j["name"] for j in await sim.service.jobs(B)] == []
    assert {j["name"] for j in await sim.service.jobs(None)} == {"a-hourly", "provider"}
    for call in (sim.service.job, sim.service.run_job, sim.service.delete_job):
        with pytest.raises(NotFound, match="job a-hourly not found"):
            await call("a-hourly", B)  # as if it did not exist
    await sim.service.delete_job("a-hourly", A)


async def test_bad_jobs_are_refused_with_the_reason(sim: Sim) -> None:
    with pytest.raises(InvalidArgument, match="five fields"):
        await sim.service.create_job(spec(cron="@hourly please"))
    with pytest.raises(InvalidArgument, match="must keep something"):
        await sim.service.create_job(spec(retention={}))
    with pytest.raises(InvalidArgument, match="needs a target"):
        await sim.service.create_job(spec(kind="backup"))
    with pytest.raises(InvalidArgument, match="takes no target"):
        await sim.service.create_job(spec(target="s3"))
    assert await sim.service.jobs() == []


async def test_a_volume_label_must_name_an_existing_job(sim: Sim) -> None:
    label = {volume_label("hourly"): "enabled"}
    with pytest.raises(InvalidArgument, match="no recurring job 'hourly'"):
        await sim.service.create_volume(VolumeCreate(name="v1", size_bytes=GiB, labels=label))
    await sim.service.create_job(spec())
    with pytest.raises(InvalidArgument, match="must be 'enabled'"):
        await sim.service.create_volume(
            VolumeCreate(name="v1", size_bytes=GiB, labels={volume_label("hourly"): "yes"})
        )
    v = await sim.service.create_volume(VolumeCreate(name="v1", size_bytes=GiB, labels=label))
    assert v["labels"] == label
    # a tenant's job is not another tenant's to attach
    for t in ("team-a", "team-b"):
        await sim.service.create_tenant(TenantCreate(name=t))
    await sim.service.create_job(spec(name="a-job"), A)
    with pytest.raises(InvalidArgument, match="no recurring job 'a-job'"):
        await sim.service.create_volume(
            VolumeCreate(name="v2", size_bytes=GiB, labels={volume_label("a-job"): "enabled"}), B
        )
