"""The manager's reconcilers stepped with run_once() over a simulated cluster (sim.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.control.model import NodeState, OperationState, VolumeState
from cargohold.control.reconcilers import EngineReconciler, ReplicaReconciler, VolumeReconciler
from cargohold.control.service import AttachRequest, SnapshotCreate, VolumeCreate
from cargohold.errors import Unschedulable, WrongState
from tests.unit.control.sim import Sim

GiB = 1 << 30


async def make(monkeypatch, nodes=3, **kw):  # type: ignore[no-untyped-def]
    sim = Sim(monkeypatch, nodes=nodes, **kw)
    await sim.start()
    return sim


async def vol(sim: Sim, name: str = "data") -> dict:  # type: ignore[type-arg]
    return await sim.service.volume(name)


async def test_create_places_replicas_on_distinct_nodes_and_they_appear(monkeypatch) -> None:
    sim = await make(monkeypatch)
    v = await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB, replicas=3))
    assert sorted(r["node"] for r in v["replicas"]) == ["node-1", "node-2", "node-3"]
    assert {r["state"] for r in v["replicas"]} == {"pending"}
    await sim.step(rounds=2)
    v = await vol(sim)
    assert v["state"] == "detached"
    assert v["robustness"] == "healthy"
    assert {r["state"] for r in v["replicas"]} == {"stopped"}


async def test_attach_starts_an_engine_with_a_new_epoch(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-2"))
    await sim.step(rounds=3)
    v = await vol(sim)
    assert v["state"] == "attached"
    assert v["attached_node"] == "node-2"
    assert v["endpoint"] == "nbd://node-2:10809/data"
    assert v["epoch"] == 1
    assert {r["mode"] for r in v["replicas"]} == {"RW"}
    await sim.service.detach("data")
    await sim.step(rounds=3)
    v = await vol(sim)
    assert v["state"] == "detached"
    assert not sim.nodes["node-2"].engines


async def test_node_loss_degrades_then_a_replacement_is_built_elsewhere(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=4, node_down_after=5)
    await sim.service.create_volume(
        VolumeCreate(name="data", size_bytes=GiB, replicas=3, stale_replica_timeout=20)
    )
    await sim.step(rounds=2)
    used = {r["node"] for r in (await vol(sim))["replicas"]}
    spare = ({"node-1", "node-2", "node-3", "node-4"} - used).pop()
    attach = sorted(used)[0]
    victim = sorted(used)[1]
    await sim.service.attach("data", AttachRequest(node=attach))
    await sim.step(rounds=3)
    sim.write("data", 100)
    await sim.step()
    sim.nodes[victim].alive = False
    await sim.step(seconds=3, rounds=3)  # 9 s: down, but not past the stale timeout
    v = await vol(sim)
    assert (await sim.service.node(victim))["state"] == NodeState.DOWN
    assert v["robustness"] == "degraded"
    assert [r["state"] for r in v["replicas"] if r["node"] == victim] == ["failed"]
    assert spare not in {r["node"] for r in v["replicas"]}
    await sim.step(seconds=5, rounds=4)  # past 20 s: replaced
    v = await vol(sim)
    nodes = {r["node"]: r for r in v["replicas"]}
    assert spare in nodes
    assert nodes[victim]["state"] == "deleting"
    await sim.step(rounds=3)
    v = await vol(sim)
    assert v["robustness"] == "healthy"
    assert v["epoch"] == 1  # the engine kept running: no takeover needed
    # the node comes back: its stale replica is deleted, the record goes
    sim.nodes[victim].alive = True
    await sim.step(rounds=3)
    v = await vol(sim)
    assert victim not in {r["node"] for r in v["replicas"]}
    assert not [r for r in sim.nodes[victim].replicas if r.startswith("data-")]


async def test_a_node_back_before_the_timeout_keeps_its_replica(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=4, node_down_after=5)
    await sim.service.create_volume(
        VolumeCreate(name="data", size_bytes=GiB, stale_replica_timeout=60)
    )
    await sim.step(rounds=2)
    before = {r["id"] for r in (await vol(sim))["replicas"]}
    victim = (await vol(sim))["replicas"][1]["node"]
    await sim.service.attach("data", AttachRequest(node=(await vol(sim))["replicas"][0]["node"]))
    await sim.step(rounds=3)
    sim.nodes[victim].alive = False
    await sim.step(seconds=5, rounds=4)
    assert (await vol(sim))["robustness"] == "degraded"
    sim.nodes[victim].alive = True
    await sim.step(rounds=3)
    v = await vol(sim)
    assert {r["id"] for r in v["replicas"]} == before
    assert v["robustness"] == "healthy"


async def test_attach_elsewhere_after_the_node_died_bumps_the_epoch(monkeypatch) -> None:
    sim = await make(monkeypatch, node_down_after=5)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB, replicas=2))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-1"))
    await sim.step(rounds=3)
    sim.write("data", 50)
    await sim.step()
    with pytest.raises(WrongState, match="attached to node node-1"):
        await sim.service.attach("data", AttachRequest(node="node-2"))
    sim.nodes["node-1"].alive = False
    await sim.step(seconds=3, rounds=3)
    v = await sim.service.attach("data", AttachRequest(node="node-2"))
    await sim.step(rounds=3)
    v = await vol(sim)
    assert v["attached_node"] == "node-2"
    assert v["epoch"] == 2
    assert v["state"] == "attached"
    eng = sim.nodes["node-2"].engines["data"]
    assert eng.epoch == 2
    assert eng.generation >= 50  # started from current data (the sim asserts require_generation)


async def test_the_manager_records_the_current_generation(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-1"))
    await sim.step(rounds=3)
    sim.write("data", 77)
    await sim.step()
    rec = await sim.repo.volume("data")
    assert rec.current_generation == 77
    await sim.service.detach("data")
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-3"))
    await sim.step(rounds=3)
    assert (await sim.repo.volume("data")).engine.require_generation == 77  # type: ignore[union-attr]


async def test_the_last_scrub_is_recorded_and_handed_to_the_next_engine(monkeypatch) -> None:
    """A succeeded pass an engine reports becomes the volume's ``last_scrub``; a failed or
    older one does not replace it; the next engine (another node) is told when it ended,
    so that its periodic passes count from it rather than from its own start."""
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-1"))
    await sim.step(rounds=3)
    assert (await vol(sim))["last_scrub"] is None
    eng = sim.nodes["node-1"].engines["data"]
    assert eng.last_scrub_at == 0.0
    eng.scrub_last = {
        "pass": 1,
        "reason": "periodic",
        "state": "succeeded",
        "started_at": 5000.0,
        "seconds": 12.5,
        "checked_blocks": 262144,
        "found": 3,
        "repaired": 3,
        "unrepaired": 0,
        "compared_replicas": 2,
        "diverged_found": 5,
        "diverged_repaired": 4,
        "diverged_unrepaired": 1,
    }
    await sim.step()
    want = {
        "ended_at": 5012.5,
        "reason": "periodic",
        "checked_blocks": 262144,
        "found": 3,
        "repaired": 3,
        "unrepaired": 0,
        "compared_replicas": 2,  # the last cross-replica comparison (issue 14)
        "diverged_found": 5,
        "diverged_repaired": 4,
        "diverged_unrepaired": 1,
    }
    assert (await vol(sim))["last_scrub"] == want
    eng.scrub_last = {**eng.scrub_last, "pass": 2, "state": "failed", "started_at": 6000.0}
    await sim.step()
    assert (await vol(sim))["last_scrub"] == want  # a failed pass proves nothing
    eng.scrub_last = {"state": "succeeded", "started_at": "garbage"}
    await sim.step()
    assert (await vol(sim))["last_scrub"] == want  # a malformed status is ignored
    await sim.service.detach("data")
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-3"))
    await sim.step(rounds=3)
    assert sim.nodes["node-3"].engines["data"].last_scrub_at == 5012.5
    assert (await vol(sim))["last_scrub"] == want  # kept across engines


async def test_unschedulable_says_why(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=3)
    await sim.service.cordon("node-3", True)
    with pytest.raises(Unschedulable, match="node-3 is cordoned"):
        await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB, replicas=3))


async def test_snapshot_on_a_detached_volume_uses_a_maintenance_engine(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    op = await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))
    await sim.step(rounds=4)
    done = await sim.service.operation(op["id"])
    assert done["state"] == "succeeded"
    snaps = await sim.service.snapshots("data")
    assert [(s["name"], s["state"]) for s in snaps] == [("s1", "ready")]
    await sim.step(rounds=2)
    assert all(not n.engines for n in sim.nodes.values())  # the maintenance engine stopped
    assert (await vol(sim))["state"] == "detached"


async def test_clone_waits_for_its_data_then_becomes_attachable(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    v = await sim.service.create_volume(
        VolumeCreate(name="copy", size_bytes=GiB, source={"volume": "data"})
    )
    assert v["state"] == "creating"
    with pytest.raises(WrongState, match="cloned"):
        await sim.service.attach("copy", AttachRequest(node="node-1"))
    await sim.step(rounds=8)
    v = await vol(sim, "copy")
    assert v["state"] == "detached", v
    assert [s["state"] for s in await sim.service.snapshots("data")] == ["ready"]
    kinds = {o["kind"]: o["state"] for o in await sim.service.operations(None)}
    assert kinds == {"snapshot-create": "succeeded", "clone": "succeeded"}


async def test_delete_removes_replicas_then_the_volume(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-1"))
    await sim.step(rounds=2)
    with pytest.raises(WrongState, match="detach it first"):
        await sim.service.delete_volume("data")
    await sim.service.detach("data")
    await sim.step(rounds=2)
    v = await sim.service.delete_volume("data")
    assert v["state"] == VolumeState.DELETING
    await sim.step(rounds=4)
    assert await sim.service.volumes() == []
    assert all(not n.replicas for n in sim.nodes.values())


async def test_retain_keeps_the_data(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(
        VolumeCreate(name="data", size_bytes=GiB, reclaim_policy="Retain")
    )
    await sim.step(rounds=2)
    v = await sim.service.delete_volume("data")
    assert v["state"] == "released"
    await sim.step(rounds=3)
    assert sum(len(n.replicas) for n in sim.nodes.values()) == 3
    await sim.service.delete_volume("data", purge=True)
    await sim.step(rounds=4)
    assert sum(len(n.replicas) for n in sim.nodes.values()) == 0


async def test_drain_moves_replicas_off_the_node(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=4)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    victim = (await vol(sim))["replicas"][0]["node"]
    await sim.service.attach("data", AttachRequest(node=(await vol(sim))["replicas"][1]["node"]))
    await sim.step(rounds=3)
    await sim.service.drain(victim)
    await sim.step(rounds=10)
    v = await vol(sim)
    assert victim not in {r["node"] for r in v["replicas"]}
    assert len(v["replicas"]) == 3
    assert v["robustness"] == "healthy"


async def test_zones_spread_replicas(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=6, zones=["a", "b", "c"])
    v = await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    zones = {(await sim.service.node(r["node"]))["zone"] for r in v["replicas"]}
    assert zones == {"a", "b", "c"}


async def test_a_detached_volume_is_rebuilt_by_a_maintenance_engine(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=4)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    first = (await vol(sim))["replicas"]
    await sim.service.attach("data", AttachRequest(node=first[0]["node"]))
    await sim.step(rounds=3)
    sim.write("data", 50)
    await sim.step()
    await sim.service.detach("data")
    await sim.step(rounds=3)
    assert all(not n.engines for n in sim.nodes.values())
    victim = first[1]["node"]
    await sim.service.drain(victim)
    saw_engine = False
    for _ in range(12):
        await sim.step()
        saw_engine = saw_engine or any(n.engines for n in sim.nodes.values())
    v = await vol(sim)
    assert saw_engine, "a maintenance engine should have rebuilt the new replica"
    assert victim not in {r["node"] for r in v["replicas"]}
    assert [r["generation"] for r in v["replicas"]] == [50, 50, 50]
    assert v["state"] == "detached" and v["robustness"] == "healthy"
    assert all(not n.engines for n in sim.nodes.values())  # and then it stopped


async def test_uncordon_ends_a_drain(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=3)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.drain("node-1")
    await sim.step(rounds=2)
    assert "1 more replica" in (await vol(sim))["error"]  # nowhere to move it
    await sim.service.cordon("node-1", False)
    await sim.step(rounds=2)
    v = await vol(sim)
    assert not any(r["evicting"] for r in v["replicas"])
    assert v["error"] == ""


# --- one reconciler at a time, through run_once() ------------------------------------------
def _rec(sim: Sim, cls: type) -> Any:  # type: ignore[type-arg]
    return next(r for r in sim.recs if isinstance(r, cls))


async def test_a_failed_operation_is_recorded_and_its_engine_stops(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    for n in sim.nodes.values():
        n.fail_ops = True
    op = await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))
    engines = _rec(sim, EngineReconciler)
    await engines.run_once()  # a maintenance engine for the pending operation
    assert (await sim.repo.volume("data")).engine.purpose == "maintenance"  # type: ignore[union-attr]
    await sim.step(rounds=3)  # its agent runs the operation: it fails
    done = await sim.service.operation(op["id"])
    assert done["state"] == "failed" and done["error"] == "boom" and done["finished_at"]
    snap = (await sim.service.snapshots("data"))[0]
    assert snap["state"] == "error" and snap["error"] == "boom"
    await engines.run_once()  # nothing waits any more: the maintenance engine goes
    assert (await sim.repo.volume("data")).engine is None


async def test_finished_operations_are_collected_after_the_retention(monkeypatch) -> None:
    sim = await make(monkeypatch, operation_retention=600)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    old = await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))
    await sim.step(rounds=4)
    assert (await sim.service.operation(old["id"]))["state"] == "succeeded"
    volumes = _rec(sim, VolumeReconciler)
    sim.clock.t += 300
    new = await sim.service.create_snapshot("data", SnapshotCreate(name="s2"))
    await sim.step(rounds=4)
    sim.clock.t += 301  # the first is 601 s old, the second 301 s
    await volumes.run_once()
    ids = {o["id"] for o in await sim.service.operations(None)}
    assert old["id"] not in ids and new["id"] in ids
    sim.clock.t += 600
    await volumes.run_once()
    assert await sim.service.operations(None) == []


async def test_an_unfinished_operation_of_a_deleted_volume_fails(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    op = await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))
    await sim.repo.delete_volume_records("data")  # gone under the operation
    await _rec(sim, VolumeReconciler).run_once()
    o = await sim.service.operation(op["id"])
    assert (o["state"], o["error"]) == ("failed", "volume deleted")


async def test_an_operation_whose_engine_vanished_runs_again(monkeypatch) -> None:
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    op = await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))

    def running(o):  # type: ignore[no-untyped-def]
        o.state, o.progress = OperationState.RUNNING, 0.3
        return o

    await sim.repo.update_operation(op["id"], running)  # an agent had started it ...
    volumes = _rec(sim, VolumeReconciler)
    await volumes.run_once()
    assert (await sim.service.operation(op["id"]))["state"] == "pending"  # ... no engine now
    await sim.repo.update_operation(op["id"], running)
    await _rec(sim, EngineReconciler).run_once()  # while an engine is wanted, it stays
    await volumes.run_once()
    assert (await sim.service.operation(op["id"]))["state"] == "running"
    await sim.step(rounds=4)  # and the next engine runs it to the end
    assert (await sim.service.operation(op["id"]))["state"] == "succeeded"


async def test_an_extra_replica_is_removed_never_the_last_current_one(monkeypatch) -> None:
    sim = await make(monkeypatch, nodes=4)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB, replicas=3))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-1"))
    await sim.step(rounds=3)

    def fewer(v):  # type: ignore[no-untyped-def]
        v.replicas_wanted = 2
        return v

    await sim.repo.update_volume("data", fewer)  # e.g. one came back after its replacement
    replicas = _rec(sim, ReplicaReconciler)
    await replicas.run_once()
    reps = await sim.repo.replicas("data")
    assert sum(r.deleting for r in reps) == 1
    await sim.step(rounds=3)
    v = await vol(sim)
    assert len(v["replicas"]) == 2 and v["robustness"] == "healthy"
    # one replica wanted, one current left of two: the current one stays
    await sim.repo.update_volume("data", lambda v: v.model_copy(update={"replicas_wanted": 1}))
    current = next(r for r in await sim.repo.replicas("data"))
    others = [r for r in await sim.repo.replicas("data") if r.id != current.id]
    for r in others:
        await sim.repo.update_replica(
            "data", r.id, lambda x: x.model_copy(update={"exists": False})
        )
    await replicas.run_once()
    left = {r.id: r.deleting for r in await sim.repo.replicas("data")}
    assert left[current.id] is False and all(left[r.id] for r in others)


async def test_a_bogus_epoch_is_reported_and_recover_epoch_unfences_the_volume(
    monkeypatch,
) -> None:
    """Issue #14 item 4: a replica that accepted epoch 2**62 (an older version had no bound)
    fenced every engine: the volume sat `attaching`, `healthy`, with no error and no way
    out. Now its error says so and `volume recover-epoch` makes the next engine run."""
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-2"))
    await sim.step(rounds=3)
    assert (await vol(sim))["state"] == "attached"
    rid = sorted(sim.nodes["node-1"].replicas)[0]
    sim.nodes["node-1"].epochs[rid] = 2**62  # a hostile OPEN, persisted by an old replica
    # the engine restarts (its node rebooted): every engine from now on is fenced
    await sim.service.detach("data")
    await sim.step(rounds=3)
    await sim.service.attach("data", AttachRequest(node="node-2"))
    await sim.step(rounds=4)
    v = await vol(sim)
    assert v["state"] == "attaching"
    assert v["error"] == (
        f"fenced by epoch {2**62} on replica {rid}, above every epoch the manager issued: "
        "run `cargohold volume recover-epoch data`"
    )
    assert v["robustness"] != "healthy"
    assert {r["id"]: r["epoch"] for r in v["replicas"]}[rid] == 2**62
    v = await sim.service.recover_epoch("data")
    assert v["error"] == ""
    await sim.step(rounds=4)
    v = await vol(sim)
    assert v["state"] == "attached"
    assert v["epoch"] == 2**62 + 1
    assert v["robustness"] == "healthy"
    assert v["error"] == ""
    assert {r["epoch"] for r in v["replicas"]} == {2**62 + 1}
    eng = sim.nodes["node-2"].engines["data"]
    assert eng.epoch == 2**62 + 1 and eng.epoch_jump
    # again, on a volume that is not fenced: nothing changes, the engine keeps running
    v = await sim.service.recover_epoch("data")
    await sim.step(rounds=2)
    v = await vol(sim)
    assert v["epoch"] == 2**62 + 1 and v["state"] == "attached"
    assert sim.nodes["node-2"].engines["data"] is eng


async def test_a_replica_on_a_full_disk_says_so_in_the_volume(monkeypatch) -> None:
    """Issue #14 item 6: a replica dropped for a full disk left the volume `degraded` with
    an empty error. Now the volume's error and the replica's name the disk and node, until
    the replica is RW again."""
    sim = await make(monkeypatch)
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-2"))
    await sim.step(rounds=3)
    eng = sim.nodes["node-2"].engines["data"]
    rid = next(r for r in sim.nodes["node-1"].replicas)
    why = "NoSpace: write at 0: no space left on disk /d/node-1 of node node-1"
    eng.down.add(rid)
    eng.errors[rid] = why
    await sim.step(rounds=2)
    v = await vol(sim)
    assert v["robustness"] == "degraded"
    assert v["error"] == f"replica {rid} is failed: {why} (re-added with back-off up to 5 min)"
    r = next(r for r in v["replicas"] if r["id"] == rid)
    assert r["state"] == "failed" and r["error"] == why
    eng.down.discard(rid)  # space came back: the re-add made it RW
    await sim.step(rounds=2)
    v = await vol(sim)
    assert v["robustness"] == "healthy"
    assert v["error"] == ""
