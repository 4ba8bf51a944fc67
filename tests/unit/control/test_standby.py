"""Standby volumes (docs/disaster-recovery.md): the pure decisions (control/standby.py) and
the follower (standby_follower.py) over the simulated cluster (sim.py) with an in-memory twin
of the target (backup_twin.py): create, follow with one catalog GET per poll, apply only
over the last complete backup, seal, revert a failed apply, pins, lag, activation, and the
attach refusal before it."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.control import service_standby
from cargohold.control.model import OperationKind, Standby, StandbyState, VolumeSource
from cargohold.control.requests import (
    AttachRequest,
    BackupTargetCreate,
    StandbyCreate,
    VolumeCreate,
)
from cargohold.control.service_backups import BackupCalls
from cargohold.control.standby import (
    SourceBackup,
    activatable,
    behind,
    finish,
    lag,
    next_step,
    source_backups,
)
from cargohold.control.standby_follower import StandbyFollower
from cargohold.errors import NotFound, WrongState
from tests.unit.control.backup_twin import KEY, TwinTargets
from tests.unit.control.sim import Sim

GiB = 1 << 30


# --- the pure part ---------------------------------------------------------------------
def sb(**kw: Any) -> Standby:
    return Standby(target="t", source_volume="src", **kw)


def test_source_backups_match_name_and_uid_oldest_first() -> None:
    infos = [
        {"id": "b2", "volume": "src", "volume_id": "u1", "created": 20.0, "size": 8},
        {"id": "b1", "volume": "src", "volume_id": "u1", "created": 10.0, "size": 8},
        {"id": "x", "volume": "other", "volume_id": "u9", "created": 30.0},
        {"id": "old", "volume": "src", "volume_id": "u0", "created": 5.0},  # a former src
    ]
    assert [b.id for b in source_backups(infos, sb())] == ["old", "b1", "b2"]
    mine = source_backups(infos, sb(source_volume_id="u1"))
    assert [b.id for b in mine] == ["b1", "b2"]
    assert behind(mine, 10.0, "b1") == 1 and behind(mine, 0.0, "") == 2


def test_lag_numbers() -> None:
    s = sb(applied="b1", applied_created=100.0, newest="b3", newest_created=160.0, behind=2)
    s.last_poll = 170.0
    assert lag(s, 200.0) == {
        "seconds": 60.0,
        "data_age_seconds": 100.0,
        "backups": 2,
        "since_poll_seconds": 30.0,
    }
    assert lag(sb(), 5.0) == {
        "seconds": None,
        "data_age_seconds": None,
        "backups": 0,
        "since_poll_seconds": None,
    }


def test_lag_as_metrics_one_series_per_standby_and_number() -> None:
    from types import SimpleNamespace

    from cargohold.control.metrics import standby_families

    following = sb(applied="b1", applied_created=100.0, newest_created=160.0, behind=2)
    following.last_poll = 170.0
    vols = [
        SimpleNamespace(name="plain", standby=None),
        SimpleNamespace(name="dr", standby=following),
        SimpleNamespace(name="fresh", standby=sb(behind=1)),  # nothing applied, never polled
        SimpleNamespace(name="done", standby=sb(state=StandbyState.ACTIVE, applied="b9")),
    ]
    got = {
        (f.name, tuple(s.labels.items())): s.value
        for f in standby_families(vols, 200.0)
        for s in f.samples
    }
    assert got == {
        ("cargohold_standby_lag_seconds", (("volume", "dr"),)): 60.0,
        ("cargohold_standby_data_age_seconds", (("volume", "dr"),)): 100.0,
        ("cargohold_standby_backups_behind", (("volume", "dr"),)): 2.0,
        ("cargohold_standby_backups_behind", (("volume", "fresh"),)): 1.0,
        ("cargohold_standby_since_poll_seconds", (("volume", "dr"),)): 30.0,
    }


NEW = SourceBackup("b2", 20.0, 8, "u1")


def test_the_state_machine() -> None:
    done = sb(applied="b1", applied_created=10.0, applied_snapshot="dr-1-x", applies=1)
    # following: a newer backup is applied over the last complete one
    step = next_step(done, NEW, "none")
    assert (step.kind, step.backup, step.base) == ("apply", "b2", "b1")
    assert next_step(done, SourceBackup("b1", 10.0, 8, "u1"), "none").kind == "wait"
    applying = done.model_copy(
        update=dict(
            phase="restore",
            operation="op-abc123",
            applying="b2",
            applying_created=20.0,
            dirty=True,
            state=StandbyState.APPLYING,
        )
    )
    assert next_step(applying, NEW, "running").kind == "wait"
    # the restore succeeded: seal it
    assert finish(applying, "succeeded") == applying
    step = next_step(applying, NEW, "succeeded")
    assert step.kind == "seal" and step.snapshot == "dr-2-abc123"
    sealing = applying.model_copy(update=dict(phase="seal", snapshot=step.snapshot))
    sealed = finish(sealing, "succeeded")
    assert (sealed.applied, sealed.applied_snapshot, sealed.dirty, sealed.phase) == (
        "b2",
        "dr-2-abc123",
        False,
        "",
    )
    assert sealed.state is StandbyState.FOLLOWING and sealed.applies == 2
    assert next_step(sealed, NEW, "none").kind == "wait"
    # the restore failed: the volume may be torn; revert to the last complete state first
    failed = finish(applying, "failed")
    assert failed.dirty and failed.phase == ""
    step = next_step(failed, NEW, "none")
    assert (step.kind, step.snapshot) == ("revert", "dr-1-x")
    reverted = finish(failed.model_copy(update=dict(phase="revert")), "succeeded")
    assert not reverted.dirty and reverted.applied == "b1" and reverted.applying == ""
    assert next_step(reverted, NEW, "none").kind == "apply"  # then again
    # activation: waits for the step running, reverts a torn state, then activates
    act = applying.model_copy(update=dict(state=StandbyState.ACTIVATING))
    assert next_step(act, NEW, "running").kind == "wait"
    assert next_step(finish(act, "failed"), NEW, "none").kind == "revert"
    assert next_step(reverted.model_copy(update=dict(state=StandbyState.ACTIVATING)), NEW,
                     "none").kind == "activate"  # fmt: skip
    assert activatable(sb()) != "" and activatable(done) == ""


# --- the follower over the simulated cluster ---------------------------------------------
@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    s = Sim(monkeypatch, nodes=3, standby_poll_interval=10.0)
    monkeypatch.setattr(service_standby, "now", s.clock)
    twins = TwinTargets()
    monkeypatch.setattr(BackupCalls, "open_backup_repository", staticmethod(twins))
    s.op_result = twins.engine_result
    s.twins = twins  # type: ignore[attr-defined]
    await s.start()
    await s.service.create_backup_target(
        BackupTargetCreate(name="site-a", url="s3://a/x", repository_key=KEY)
    )
    return s


async def run(sim: Sim, f: StandbyFollower, rounds: int = 6) -> None:
    for _ in range(rounds):
        await f.run_once(now=sim.clock.t)
        await sim.step(rounds=3)


async def test_create_follow_apply_seal_pin_and_activate(sim: Sim) -> None:
    twin = sim.twins.repos["s3://a/x"]  # type: ignore[attr-defined]
    b1 = twin.add(volume="db", volume_id="uid-db", size=GiB, created=sim.clock.t - 100)
    with pytest.raises(NotFound, match="no backup of a volume nope"):
        await sim.service.create_standby(
            StandbyCreate(name="db-dr", target="site-a", source_volume="nope")
        )
    v = await sim.service.create_standby(
        StandbyCreate(name="db-dr", target="site-a", source_volume="db")
    )
    assert v["standby"]["state"] == "applying" and v["state"] == "restoring"
    assert v["size_bytes"] == GiB and v["standby"]["source_volume_id"] == "uid-db"
    assert list(twin.pins.values()) == [[b1["id"]]]
    f = StandbyFollower(sim.service)
    await run(sim, f)
    v = await sim.service.volume("db-dr")
    st = v["standby"]
    ops = [(o.kind.value, o.state.value, o.error) for o in await sim.repo.operations("db-dr")]
    assert st["state"] == "following" and st["applied"] == b1["id"], (st, ops)
    assert st["applied_snapshot"].startswith("dr-1-") and not st["dirty"]
    assert st["lag"]["backups"] == 0 and st["lag"]["seconds"] == 0.0
    with pytest.raises(WrongState, match="activate it first"):
        await sim.service.attach("db-dr", AttachRequest(node="node-1"))
    # inspection: a clone of the seal (the last complete state) is an ordinary volume
    peek = await sim.service.create_volume(
        VolumeCreate(
            name="peek",
            size_bytes=GiB,
            source=VolumeSource(volume="db-dr", snapshot=st["applied_snapshot"]),
        )
    )
    assert peek["source"]["snapshot"] == st["applied_snapshot"]
    await sim.step(rounds=8)
    ops = [(o.kind.value, o.state.value) for o in await sim.repo.operations("peek")]
    assert (await sim.service.volume("peek"))["state"] == "detached", ops
    # a newer backup: applied over b1 (RESTORE with base), sealed, the old seal dropped
    gets = twin.gets
    b2 = twin.add(volume="db", volume_id="uid-db", size=GiB, created=sim.clock.t)
    twin.add(volume="other", volume_id="uid-x", size=GiB, created=sim.clock.t + 1)
    sim.clock.t += 11
    await run(sim, f)
    st = (await sim.service.volume("db-dr"))["standby"]
    assert st["applied"] == b2["id"] and st["applies"] == 2 and st["state"] == "following"
    assert st["last_apply"]["changed_bytes"] == 8192
    restores = [o for o in await sim.repo.operations("db-dr") if o.kind is OperationKind.RESTORE]
    assert [o.args.get("base") for o in restores] == [None, b1["id"]]
    assert [o.args["backup"] for o in restores][-1] == b2["id"]
    snaps = {s.name: s.state.value for s in await sim.repo.snapshots("db-dr")}
    assert st["applied_snapshot"] in snaps and not any(
        n.startswith("dr-1-") and s == "ready" for n, s in snaps.items()
    )
    assert twin.pins[next(iter(twin.pins))] == [b2["id"]]
    # the source's retention may not delete the pinned backup
    with pytest.raises(Exception, match="pinned"):
        twin.delete(b2["id"])
    twin.delete(b1["id"])  # no longer pinned
    # polls: one catalog GET per interval, not per pass
    assert 1 <= twin.gets - gets <= 2
    with pytest.raises(WrongState, match="followed by standby db-dr"):
        await sim.service.delete_backup_target("site-a")
    # activate: idempotent; then attachable
    v = await sim.service.activate("db-dr")
    assert v["standby"]["state"] == "activating"
    await run(sim, f, 2)
    v = await sim.service.activate("db-dr")
    assert v["standby"]["state"] == "active" and twin.pins == {}
    await sim.service.attach("db-dr", AttachRequest(node="node-1"))


async def test_a_read_only_attach_holds_the_last_complete_backup(sim: Sim) -> None:
    twin = sim.twins.repos["s3://a/x"]  # type: ignore[attr-defined]
    b1 = twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t - 100)
    await sim.service.create_standby(StandbyCreate(name="s", target="site-a", source_volume="db"))
    with pytest.raises(WrongState, match="still being restored"):
        await sim.service.attach("s", AttachRequest(node="node-1", read_only=True))
    f = StandbyFollower(sim.service)
    await run(sim, f)
    v = await sim.service.attach("s", AttachRequest(node="node-1", read_only=True))
    assert v["attached_node"] == "node-1" and v["attached_read_only"]
    with pytest.raises(WrongState, match="activate it first"):
        await sim.service.attach("s", AttachRequest(node="node-1"))
    await sim.step(rounds=4)
    vol = await sim.repo.volume("s")
    assert vol.engine is not None and vol.engine.read_only and vol.engine.purpose == "attach"
    # a newer backup while attached: polled (the lag shows it), not applied
    twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t)
    sim.clock.t += 11
    await run(sim, f)
    st = (await sim.service.volume("s"))["standby"]
    assert st["applied"] == b1["id"] and st["lag"]["backups"] == 1 and not st["dirty"]
    restores = [o for o in await sim.repo.operations("s") if o.kind is OperationKind.RESTORE]
    assert len(restores) == 1
    # detached: it catches up; an attach during the apply is refused (never half-applied)
    await sim.service.detach("s")
    sim.clock.t += 11
    await f.run_once(now=sim.clock.t)
    st = (await sim.service.volume("s"))["standby"]
    assert st["dirty"] and st["phase"] == "restore"
    with pytest.raises(WrongState, match="try again in a moment"):
        await sim.service.attach("s", AttachRequest(node="node-1", read_only=True))
    await run(sim, f)
    st = (await sim.service.volume("s"))["standby"]
    assert st["behind"] == 0 and st["applies"] == 2 and not st["dirty"]
    # activated while attached read-only: read-write needs a detach first
    await sim.service.attach("s", AttachRequest(node="node-1", read_only=True))
    await sim.service.activate("s")
    await run(sim, f, 2)
    with pytest.raises(WrongState, match="attached read-only to node node-1; detach it first"):
        await sim.service.attach("s", AttachRequest(node="node-1"))
    await sim.service.detach("s")
    v = await sim.service.attach("s", AttachRequest(node="node-1"))
    assert not v["attached_read_only"]
    await sim.step(rounds=4)
    vol = await sim.repo.volume("s")
    assert vol.engine is not None and not vol.engine.read_only


async def test_a_failed_apply_is_reverted_and_an_unreachable_target_makes_lag_grow(
    sim: Sim,
) -> None:
    twin = sim.twins.repos["s3://a/x"]  # type: ignore[attr-defined]
    twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t - 100)
    await sim.service.create_standby(StandbyCreate(name="s", target="site-a", source_volume="db"))
    f = StandbyFollower(sim.service)
    await run(sim, f)
    first = (await sim.service.volume("s"))["standby"]
    b2 = twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t)
    for n in sim.nodes.values():
        n.fail_ops = True
    sim.clock.t += 11
    await run(sim, f, 2)
    st = (await sim.service.volume("s"))["standby"]
    assert st["applied"] == first["applied"], st
    for n in sim.nodes.values():
        n.fail_ops = False
    await run(sim, f, 8)
    kinds = [o.kind for o in await sim.repo.operations("s")]
    assert OperationKind.SNAPSHOT_REVERT in kinds
    st = (await sim.service.volume("s"))["standby"]
    ops = [(o.kind.value, o.state.value, o.error) for o in await sim.repo.operations("s")]
    assert st["applied"] == b2["id"] and not st["dirty"], (st, ops)
    # the target stops answering: the poll error is recorded, the lag grows
    twin.down = True
    b3 = twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t)
    sim.clock.t += 11
    await run(sim, f, 1)
    st = (await sim.service.volume("s"))["standby"]
    assert "unreachable" in st["poll_error"] and st["applied"] == b2["id"]
    twin.down = False
    sim.clock.t += 11
    await run(sim, f, 8)
    st = (await sim.service.volume("s"))["standby"]
    assert st["applied"] == b3["id"] and st["poll_error"] == ""


async def test_a_new_manager_takes_over_mid_apply(sim: Sim) -> None:
    """The follower keeps nothing of its own: a manager killed mid-apply (its follower gone)
    is replaced by another whose follower carries the apply through from the records."""
    twin = sim.twins.repos["s3://a/x"]  # type: ignore[attr-defined]
    twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t - 100)
    await sim.service.create_standby(StandbyCreate(name="s", target="site-a", source_volume="db"))
    await run(sim, StandbyFollower(sim.service))
    b2 = twin.add(volume="db", volume_id="u", size=GiB, created=sim.clock.t)
    sim.clock.t += 11
    old = StandbyFollower(sim.service)
    await old.run_once(now=sim.clock.t)  # starts the apply, then its manager dies
    st = (await sim.service.volume("s"))["standby"]
    assert st["phase"] == "restore" and st["applying"] == b2["id"], st
    await sim.step(rounds=3)
    await run(sim, StandbyFollower(sim.service))  # the next leader's
    st = (await sim.service.volume("s"))["standby"]
    assert st["applied"] == b2["id"] and st["state"] == "following" and not st["dirty"], st
    restores = [o for o in await sim.repo.operations("s") if o.kind is OperationKind.RESTORE]
    assert len(restores) == 2  # the apply was not started twice
