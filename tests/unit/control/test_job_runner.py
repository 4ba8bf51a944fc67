"""The recurring-job runner (control/job_runner.py) stepped with a fake clock and fake
actions over the in-memory state store: runs start when due and only then, missed slots
are caught up once, a run past its deadline is failed and does not block the next, caps per
node and per target hold, retention deletes only what the job made, run-now, and every
outcome is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.control.job_actions import VolumeFacts
from cargohold.control.job_runner import JobRunner
from cargohold.control.jobs import (
    JOB_LABEL,
    JobSelector,
    JobStore,
    RecurringJob,
    Retention,
    volume_label,
)
from cargohold.control.state import open_store
from cargohold.errors import NotFound, Unsupported

T0 = 1_772_409_600.0  # 2026-03-02 00:00 UTC
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class FakeActions:
    """Snapshots and backups made by operations that end when the test says so."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.vols: list[VolumeFacts] = []
        self.ops: dict[str, dict[str, Any]] = {}
        self.snaps: dict[str, list[dict[str, Any]]] = {}
        self.backups_: dict[str, dict[str, Any]] = {}
        self.auto = True  # operations succeed as soon as they are looked at
        self.started: list[tuple[str, str]] = []  # (volume, object)
        self.deleted: list[str] = []
        self.no_backups = False

    async def volumes(self) -> list[VolumeFacts]:
        return list(self.vols)

    def _op(self, volume: str, obj: str) -> dict[str, Any]:
        oid = f"op-{len(self.ops)}"
        self.ops[oid] = {"id": oid, "state": "pending", "volume": volume, "obj": obj}
        self.started.append((volume, obj))
        return self.ops[oid]

    async def create_snapshot(self, volume: str, name: str, labels: dict[str, str]) -> Any:
        self.snaps.setdefault(volume, []).append(
            {"name": name, "state": "pending", "created_at": self.clock.t, "labels": labels}
        )
        return self._op(volume, name)

    async def delete_snapshot(self, volume: str, name: str) -> None:
        self.snaps[volume] = [s for s in self.snaps[volume] if s["name"] != name]
        self.deleted.append(name)

    async def snapshots(self, volume: str) -> list[dict[str, Any]]:
        return list(self.snaps.get(volume, []))

    async def create_backup(self, volume: str, target: str, labels: dict[str, str]) -> Any:
        if self.no_backups:
            raise Unsupported("backups are not available in this manager")
        bid = f"bk-{volume}-{len(self.backups_)}"
        self.backups_[bid] = {
            "id": bid,
            "volume": volume,
            "target": target,
            "state": "pending",
            "created": self.clock.t,
            "labels": labels,
        }
        op = self._op(volume, bid)
        op["args"] = {"backup": bid}
        return op

    async def delete_backup(self, backup: str) -> None:
        self.backups_.pop(backup)
        self.deleted.append(backup)

    async def backups(self, volume: str, target: str) -> list[dict[str, Any]]:
        return [b for b in self.backups_.values() if b["volume"] == volume]

    async def operation(self, oid: str) -> dict[str, Any]:
        if oid not in self.ops:
            raise NotFound(f"operation {oid} not found")
        op = self.ops[oid]
        if self.auto and op["state"] == "pending":
            self.finish(oid, "succeeded")
        return op

    def finish(self, oid: str, state: str, error: str = "") -> None:
        op = self.ops[oid]
        op["state"], op["error"] = state, error
        for s in self.snaps.get(op["volume"], []):
            if s["name"] == op["obj"] and state == "succeeded":
                s["state"] = "ready"
        if op["obj"] in self.backups_ and state == "succeeded":
            self.backups_[op["obj"]]["state"] = "ready"


@pytest.fixture
def env() -> tuple[JobStore, FakeActions, Clock, JobRunner]:
    clock = Clock()
    store = JobStore(open_store("memory:"))
    acts = FakeActions(clock)
    acts.vols = [
        VolumeFacts("a", node="n1"),
        VolumeFacts("b", node="n1"),
        VolumeFacts("c", node="n2", labels={"tier": "gold"}),
    ]
    return store, acts, clock, JobRunner(store, acts, clock)


def job(**kw: Any) -> RecurringJob:
    base: dict[str, Any] = {
        "name": "hourly",
        "kind": "snapshot",
        "cron": "0 * * * *",
        "retention": Retention(keep_last=2),
        "selector": JobSelector(volumes=["a"]),
        "max_jitter": 0,
        "created_at": T0 + 60,
    }
    return RecurringJob(**{**base, **kw})


async def runs(store: JobStore) -> dict[str, Any]:
    return {r.volume: r for r in await store.runs()}


async def test_runs_when_due_and_retention_keeps_the_last_two(env: Any) -> None:
    store, acts, clock, runner = env
    await store.create(job())
    await runner.run_once()
    assert acts.started == []  # not due before the first slot
    assert (await runs(store))["a"].next_due == T0 + HOUR
    for i in range(1, 5):
        clock.t = T0 + i * HOUR + 5
        await runner.run_once()  # starts the run
        await runner.run_once()  # follows it: succeeded, retention applied
    names = [s["name"] for s in acts.snaps["a"]]
    assert len(acts.started) == 4 and len(names) == 2
    assert names == [acts.started[2][1], acts.started[3][1]]  # the two newest
    assert acts.deleted == [acts.started[0][1], acts.started[1][1]]
    r = (await runs(store))["a"]
    assert r.runs == 4 and r.failures == 0 and r.last_result == "succeeded"
    assert [h.result for h in r.history] == ["succeeded"] * 4
    assert r.history[-1].deleted == [acts.started[1][1]]
    assert all(s["labels"] == {JOB_LABEL: "hourly"} for s in acts.snaps["a"])
    assert all(n.startswith("hourly-20260302-") for _, n in acts.started)


async def test_retention_touches_only_what_the_job_made(env: Any) -> None:
    store, acts, clock, runner = env
    acts.snaps["a"] = [
        {"name": "mine", "state": "ready", "created_at": T0 - 10, "labels": {}},
        {"name": "other", "state": "ready", "created_at": T0 - 5, "labels": {JOB_LABEL: "x"}},
    ]
    await store.create(job(retention=Retention(keep_last=1)))
    for i in range(1, 4):
        clock.t = T0 + i * HOUR
        await runner.run_once()
        await runner.run_once()
    names = {s["name"] for s in acts.snaps["a"]}
    assert {"mine", "other", acts.started[-1][1]} == names


async def test_missed_slots_are_caught_up_once(env: Any) -> None:
    store, acts, clock, runner = env
    await store.create(job())
    clock.t = T0 + 10 * HOUR + 30  # nine slots passed while the manager was away
    await runner.run_once()
    await runner.run_once()
    await runner.run_once()
    assert len(acts.started) == 1
    r = (await runs(store))["a"]
    assert r.last_slot == T0 + 10 * HOUR and r.next_due == T0 + 11 * HOUR


async def test_a_stuck_run_fails_at_its_deadline_and_the_next_one_starts(env: Any) -> None:
    store, acts, clock, runner = env
    acts.auto = False
    await store.create(job(deadline=1800))
    clock.t = T0 + HOUR
    await runner.run_once()
    assert len(acts.started) == 1
    clock.t = T0 + HOUR + 1700
    await runner.run_once()
    r = (await runs(store))["a"]
    assert r.running is not None and r.last_result == "running"
    clock.t = T0 + HOUR + 1801  # past its deadline: failed, and the slot is free again
    await runner.run_once()
    r = (await runs(store))["a"]
    assert r.running is None and r.last_result == "failed"
    assert "deadline exceeded" in r.last_error and r.failures == 1
    clock.t = T0 + 2 * HOUR  # the next slot starts a new run though the old op never ended
    await runner.run_once()
    assert len(acts.started) == 2
    assert (await runs(store))["a"].running is not None


async def test_a_run_that_outlasts_its_slot_makes_the_next_wait_then_run_once(env: Any) -> None:
    store, acts, clock, runner = env
    acts.auto = False
    await store.create(job(deadline=5 * HOUR))
    clock.t = T0 + HOUR
    await runner.run_once()
    clock.t = T0 + 3 * HOUR + 10  # two slots passed while it ran
    await runner.run_once()
    assert len(acts.started) == 1
    acts.finish("op-0", "succeeded")
    await runner.run_once()  # ended; one run for the newest missed slot
    assert len(acts.started) == 2
    assert (await runs(store))["a"].last_slot == T0 + 3 * HOUR


async def test_failures_are_recorded(env: Any) -> None:
    store, acts, clock, runner = env
    acts.auto = False
    await store.create(job())
    clock.t = T0 + HOUR
    await runner.run_once()
    acts.finish("op-0", "failed", "engine said no")
    await runner.run_once()
    r = (await runs(store))["a"]
    assert r.last_result == "failed" and r.last_error == "engine said no"
    assert acts.deleted == []  # a failed run applies no retention


async def test_caps_per_node(env: Any) -> None:
    store, acts, clock, runner = env
    acts.auto = False
    await store.create(job(selector=JobSelector(volumes=["a", "b", "c"]), max_per_node=1))
    clock.t = T0 + HOUR
    await runner.run_once()
    started = {v for v, _ in acts.started}
    assert started == {"a", "c"}  # a and b share node n1: one at a time
    r = await runs(store)
    assert "node n1 has 1 runs in flight" in r["b"].waiting
    acts.finish("op-0", "succeeded")
    await runner.run_once()
    assert {v for v, _ in acts.started} == {"a", "b", "c"}  # b's turn (still due once)
    assert (await runs(store))["b"].waiting == ""


async def test_caps_per_target_and_backups(env: Any) -> None:
    store, acts, clock, runner = env
    acts.auto = False
    await store.create(
        job(
            name="nightly",
            kind="backup",
            target="s3",
            cron="0 2 * * *",
            selector=JobSelector(volumes=["a", "b", "c"]),
            max_per_node=5,
            max_per_target=2,
        )
    )
    clock.t = T0 + 2 * HOUR
    await runner.run_once()
    assert len(acts.started) == 2
    for oid in list(acts.ops):
        acts.finish(oid, "succeeded")
    await runner.run_once()
    assert len(acts.started) == 3
    r = await runs(store)
    assert sorted(x.history[-1].object for x in r.values() if x.history) == [
        "bk-a-0",
        "bk-b-1",
    ]
    assert all(b["labels"] == {JOB_LABEL: "nightly"} for b in acts.backups_.values())


async def test_backups_not_available_is_a_recorded_failure(env: Any) -> None:
    store, acts, clock, runner = env
    acts.no_backups = True
    await store.create(job(name="nightly", kind="backup", target="s3"))
    clock.t = T0 + HOUR
    await runner.run_once()
    r = (await runs(store))["a"]
    assert r.last_result == "failed" and "backups are not available" in r.last_error
    clock.t = T0 + HOUR + 600
    await runner.run_once()  # not retried every pass: at the next slot
    assert (await runs(store))["a"].runs == 1


async def test_selection_by_label_and_by_the_storage_class_label(env: Any) -> None:
    store, acts, clock, runner = env
    acts.vols.append(VolumeFacts("d", node="n3", labels={volume_label("hourly"): "enabled"}))
    acts.vols.append(VolumeFacts("e", node="n3", tenant="team-a", labels={"tier": "gold"}))
    await store.create(job(selector=JobSelector(labels={"tier": "gold"}), max_per_node=5))
    await store.create(
        job(
            name="teams",
            selector=JobSelector(labels={"tier": "gold"}),
            tenant="team-a",
            max_per_node=5,
        )
    )
    clock.t = T0 + HOUR
    await runner.run_once()
    got = sorted((v, n.rsplit("-", 3)[0]) for v, n in acts.started)
    # the provider's job selects every tenant's volume; a tenant's job only its own
    assert got == [("c", "hourly"), ("d", "hourly"), ("e", "hourly"), ("e", "teams")]


async def test_run_now_disabled_and_deleted_jobs(env: Any) -> None:
    store, acts, clock, runner = env
    await store.create(job(enabled=False))
    clock.t = T0 + 5 * HOUR
    await runner.run_once()
    assert acts.started == []  # disabled: no scheduled runs

    def now(j: RecurringJob) -> RecurringJob:
        j.run_now_at = clock.t
        return j

    await store.update("hourly", now)
    await runner.run_once()
    await runner.run_once()
    assert len(acts.started) == 1  # run-now runs it once, even disabled
    await runner.run_once()
    assert len(acts.started) == 1
    await store.delete("hourly")
    assert await store.runs() == []
    await runner.run_once()
    assert await store.runs() == [] and len(acts.snaps["a"]) == 1  # what it made stays


async def test_run_state_of_a_gone_volume_is_dropped(env: Any) -> None:
    store, acts, clock, runner = env
    await store.create(job())
    clock.t = T0 + HOUR
    await runner.run_once()
    assert [r.volume for r in await store.runs()] == ["a"]
    acts.vols = [v for v in acts.vols if v.name != "a"]
    await runner.run_once()
    assert await store.runs() == []
