"""Deletion only on positive evidence (invariant 7): the pure decision, the agent's
allegiance, and the manager's heartbeat and reconcilers over the in-memory store.

Before cluster identity, a replica on a node's disk whose volume had no record was
deleted at the next heartbeat (``assignments``); these tests fail on that code."""

from __future__ import annotations

import pytest

from cargohold.agent.identity import judge
from cargohold.control.deletion import Verdict, decide
from cargohold.control.model import Heartbeat, Replica, ReplicaReport, Tombstone
from tests.unit.control.sim import Sim

A = "c-" + "a" * 32
B = "c-" + "b" * 32
RID = "data-r1a2b3c"


def report(cluster: str = "", disk: str = "") -> ReplicaReport:
    return ReplicaReport(id=RID, volume="data", cluster_id=cluster, disk_cluster_id=disk)


def record(deleting: bool) -> Replica:
    return Replica(id=RID, volume="data", node="n1", disk="d0", deleting=deleting)


def stone(cluster: str = A, rid: str = RID) -> Tombstone:
    return Tombstone(replica=rid, volume="data", node="n1", cluster_id=cluster)


@pytest.mark.parametrize(
    ("rep", "rec", "tomb", "manager", "want"),
    [
        # a record decides, when there is one
        (report(A), record(False), None, A, Verdict.KEEP),
        (report(A), record(True), None, A, Verdict.DELETE),
        (report(B), record(True), None, A, Verdict.FOREIGN),
        (report(A), record(False), stone(), A, Verdict.KEEP),  # re-created after a deletion
        # no record: only a tombstone of this cluster condemns it
        (report(A), None, None, A, Verdict.ORPHAN),
        (report(A), None, stone(A), A, Verdict.DELETE),
        (report(A), None, stone(B), A, Verdict.FOREIGN),
        (report(B), None, stone(A), A, Verdict.FOREIGN),
        (report(A), None, stone(A, rid="other-r000000"), A, Verdict.ORPHAN),
        # a deletion done: the same id back on the disk (undone from the trash) is kept
        (report(A), None, stone(A).model_copy(update={"done_at": 5.0}), A, Verdict.ORPHAN),
        # a replica without its own stamp counts as its disk's
        (report("", A), None, stone(A), A, Verdict.DELETE),
        (report("", B), None, stone(A), A, Verdict.FOREIGN),
        (report("", ""), None, stone(A), A, Verdict.FOREIGN),  # unstamped disk: not yet
        (report("", A), record(True), None, A, Verdict.DELETE),
        # an empty store's manager (a new cluster id): everything is an orphan
        (report(A), None, None, B, Verdict.ORPHAN),
        # no cluster ids at all (the in-memory store of unit tests)
        (report(), None, stone(""), "", Verdict.DELETE),
        (report(), None, None, "", Verdict.ORPHAN),
    ],
)
def test_the_deletion_decision(rep, rec, tomb, manager, want) -> None:  # type: ignore[no-untyped-def]
    assert decide(rep, rec, tomb, manager) is want


def listed(rid: str, disk: str = "/d0", cluster: str = "") -> ReplicaReport:
    return ReplicaReport(id=rid, volume=rid.rsplit("-r", 1)[0], disk_path=disk, cluster_id=cluster)


@pytest.mark.parametrize(
    ("manager", "stamps", "broken", "replicas", "assigned", "refused", "stamp"),
    [
        # a new node: stamp its empty disk
        (A, {"/d0": None}, {}, [], set(), "", ["/d0"]),
        # its own cluster
        (A, {"/d0": A}, {}, [listed("v-r1")], {"v-r1"}, "", []),
        (A, {"/d0": A}, {}, [listed("v-r1")], set(), "", []),  # orphans of its own: acts
        # another cluster's manager (an empty store given --init): refuses
        (B, {"/d0": A}, {}, [listed("v-r1")], set(), "cluster id mismatch", []),
        (B, {"/d0": A}, {}, [], set(), "cluster id mismatch", []),
        ("", {"/d0": A}, {}, [], set(), "cluster id mismatch", []),  # an older manager
        # a broken stamp: acts for nobody
        (A, {}, {"/d0": "not JSON"}, [], set(), "unreadable", []),
        # unstamped disks full of replicas the manager knows nothing of: refuses
        (A, {"/d0": None}, {}, [listed("v-r1"), listed("w-r2")], set(), "knows none", []),
        # ... but one it knows (an upgrade from before cluster ids): acts, and stamps
        (A, {"/d0": None}, {}, [listed("v-r1"), listed("w-r2")], {"v-r1"}, "", ["/d0"]),
        # a disk of strangers is not stamped while another disk is the manager's
        (
            A,
            {"/d0": None, "/d1": None},
            {},
            [listed("v-r1", "/d0"), listed("w-r2", "/d1")],
            {"v-r1"},
            "",
            ["/d0"],
        ),
        # no cluster ids anywhere (in-memory tests, fake managers): acts as before
        ("", {"/d0": None}, {}, [listed("v-r1")], set(), "", []),
    ],
)
def test_the_agent_acts_only_for_its_cluster(  # type: ignore[no-untyped-def]
    manager, stamps, broken, replicas, assigned, refused, stamp
) -> None:
    got = judge(manager, stamps, broken, replicas, assigned)
    if refused:
        assert refused in got.refusal and got.stamp == []
    else:
        assert got.refusal == "" and got.stamp == stamp


# --- the manager: heartbeat and reconcilers over the in-memory store ----------------------
@pytest.fixture
async def sim(monkeypatch):  # type: ignore[no-untyped-def]
    s = Sim(monkeypatch, nodes=3, orphan_grace=100.0, tombstone_ttl=50.0)
    s.repo.cluster_id = A
    await s.start()
    return s


async def beat(sim: Sim, node: str, *reps: ReplicaReport):  # type: ignore[no-untyped-def]
    return await sim.service.heartbeat(node, Heartbeat(replicas=list(reps)))


def on_disk(rid: str, **kw) -> ReplicaReport:  # type: ignore[no-untyped-def]
    kw.setdefault("disk_cluster_id", A)
    return ReplicaReport(id=rid, volume=rid.rsplit("-r", 1)[0], **kw)


async def test_an_unknown_replica_is_an_orphan_not_deleted(sim: Sim) -> None:
    a = await beat(
        sim,
        "node-1",
        on_disk("lost-r0a0b0c", size_bytes=1 << 20, generation=7, history=[[1, 0], [2, 5]]),
    )
    assert [r for r in a.replicas if r.delete] == []  # the old code said delete=True here
    assert a.cluster_id == A
    (o,) = await sim.repo.orphans()
    assert (o.id, o.volume, o.node, o.size_bytes, o.generation, o.history) == (
        "lost-r0a0b0c",
        "lost",
        "node-1",
        1 << 20,
        7,
        [[1, 0], [2, 5]],
    )
    assert o.cluster_id == A and o.first_seen == o.last_seen
    assert [e.kind for e in await sim.repo.events()] == ["orphan-found"]
    # seen again: one record, no second event; gone from the disk: forgotten
    await beat(sim, "node-1", on_disk("lost-r0a0b0c", size_bytes=1 << 20, generation=7))
    assert len(await sim.repo.orphans()) == 1 and len(await sim.repo.events()) == 1
    await beat(sim, "node-1")
    assert await sim.repo.orphans() == []


async def test_an_orphan_back_in_a_record_stops_being_one(sim: Sim) -> None:
    await beat(sim, "node-1", on_disk("lost-r0a0b0c"))
    assert len(await sim.repo.orphans()) == 1
    # the state is restored: a record names it again
    rec = Replica(id="lost-r0a0b0c", volume="lost", node="node-1", disk="disk-0")
    await sim.repo.store.put("/replicas/lost/lost-r0a0b0c", rec.model_dump_json().encode())
    a = await beat(sim, "node-1", on_disk("lost-r0a0b0c"))
    assert await sim.repo.orphans() == []
    assert [(r.id, r.delete) for r in a.replicas] == [("lost-r0a0b0c", False)]


async def test_a_deleted_volume_is_deleted_from_a_node_that_was_away(sim: Sim) -> None:
    await sim.service.create_volume(_volume("gone", 2))
    await sim.step(rounds=2)
    reps = await sim.repo.replicas("gone")
    away = reps[0].node
    sim.nodes[away].alive = False
    await sim.step(seconds=10, rounds=2)  # the node is down
    await sim.service.delete_volume("gone")
    await sim.step(rounds=4)
    assert await sim.repo.volumes() == []
    stones = {s.replica: s for s in await sim.repo.tombstones()}
    assert set(stones) == {r.id for r in reps}
    assert stones[reps[0].id].cluster_id == A and stones[reps[0].id].done_at is None
    # the node returns with its copy: the tombstone is the evidence, it goes
    sim.nodes[away].alive = True
    rid = reps[0].id
    a = await beat(sim, away, on_disk(rid))
    assert [(r.id, r.delete) for r in a.replicas] == [(rid, True)]
    assert await sim.repo.orphans() == []
    await beat(sim, away)  # gone from its disk: the tombstone says when
    (done,) = [s for s in await sim.repo.tombstones() if s.replica == rid]
    assert done.done_at is not None
    assert "replica-deleted" in [e.kind for e in await sim.repo.events()]
    # another cluster's copy of the same id is never deleted on that evidence
    a = await beat(sim, away, on_disk(rid, cluster_id=B))
    assert [r for r in a.replicas if r.delete] == []


async def test_an_operator_deletes_an_orphan_through_a_tombstone(sim: Sim) -> None:
    await beat(sim, "node-2", on_disk("lost-r0a0b0c"))
    await sim.service.delete_orphan("node-2", "lost-r0a0b0c")
    assert await sim.repo.orphans() == []
    a = await beat(sim, "node-2", on_disk("lost-r0a0b0c"))
    assert [(r.id, r.delete) for r in a.replicas] == [("lost-r0a0b0c", True)]
    assert [e.kind for e in await sim.repo.events()] == ["orphan-found", "orphan-deleted"]


async def test_orphans_go_after_their_grace_only_when_of_this_cluster(sim: Sim) -> None:
    await beat(sim, "node-1", on_disk("mine-r0a0b0c"), on_disk("theirs-r0d0e0f", cluster_id=B))
    sim.clock.t += 60
    for rec in sim.recs:
        await rec.run_once()
    assert len(await sim.repo.orphans()) == 2
    sim.clock.t += 60  # past orphan_grace (100 s)
    for rec in sim.recs:
        await rec.run_once()
    assert [o.id for o in await sim.repo.orphans()] == ["theirs-r0d0e0f"]
    assert [s.replica for s in await sim.repo.tombstones()] == ["mine-r0a0b0c"]
    sim.clock.t += 60  # past tombstone_ttl (50 s): pruned
    for rec in sim.recs:
        await rec.run_once()
    assert await sim.repo.tombstones() == []


async def test_orphan_grace_zero_keeps_them_for_ever(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    s = Sim(monkeypatch, nodes=1, orphan_grace=0.0)
    s.repo.cluster_id = A
    await s.start()
    await beat(s, "node-1", on_disk("mine-r0a0b0c"))
    s.clock.t += 10 * 365 * 86400
    for rec in s.recs:
        await rec.run_once()
    assert len(await s.repo.orphans()) == 1


async def test_a_refusing_agent_shows_on_its_node(sim: Sim) -> None:
    hb = Heartbeat(refusal="cluster id mismatch: disk /d0 belongs to cluster c-b...")
    await sim.service.heartbeat("node-3", hb)
    await sim.service.heartbeat("node-3", hb)
    node = await sim.repo.node("node-3")
    assert node.error.startswith("cluster id mismatch")
    assert [e.kind for e in await sim.repo.events()] == ["agent-refused"]  # once
    await sim.service.heartbeat("node-3", Heartbeat())
    assert (await sim.repo.node("node-3")).error == ""


async def test_the_event_log_keeps_the_newest(sim: Sim) -> None:
    from cargohold.control.model import EventKind

    for i in range(30):
        await sim.repo.add_event(EventKind.ORPHAN_FOUND, f"e{i}")
    assert await sim.repo.trim_events(keep=10) == 20
    assert [e.message for e in await sim.repo.events()] == [f"e{i}" for i in range(20, 30)]


def _volume(name: str, replicas: int):  # type: ignore[no-untyped-def]
    from cargohold.control.service import VolumeCreate

    return VolumeCreate(name=name, size_bytes=1 << 30, replicas=replicas)


async def test_orphan_records_that_outlive_their_replica_are_dropped(sim: Sim) -> None:
    """Another manager recorded an orphan whose replica then went (or came back into a
    record): the identity reconciler drops the record once it is not seen for 10 minutes
    while its node is up, or at once when a record names it."""
    lost = on_disk("lost-r0a0b0c", cluster_id=B)  # another cluster's: orphan_grace spares it
    await beat(sim, "node-1", lost, on_disk("back-r0d0e0f"))
    rec = Replica(id="back-r0d0e0f", volume="back", node="node-1", disk="disk-0")
    await sim.repo.store.put("/replicas/back/back-r0d0e0f", rec.model_dump_json().encode())
    sim.repo.unknown_seen.clear()  # as if those heartbeats had gone to another manager
    for r in sim.recs:
        await r.run_once()
    assert [o.id for o in await sim.repo.orphans()] == ["lost-r0a0b0c"]
    sim.repo.unknown_seen.update({n: frozenset() for n in sim.nodes})  # this manager saw none
    await sim.step(seconds=300)  # node-1 beats reporting neither: no heartbeat reads orphans
    assert [o.id for o in await sim.repo.orphans()] == ["lost-r0a0b0c"]
    await sim.step(seconds=301)
    assert await sim.repo.orphans() == []


async def test_a_deletion_undone_from_the_trash_is_kept(sim: Sim) -> None:
    """An operator moves a deleted replica back from its trash: its tombstone is done (the
    node reported it gone), so it is an orphan now, kept — not deleted a second time."""
    await sim.service.create_volume(_volume("undo", 2))
    await sim.step(rounds=2)
    rep = (await sim.repo.replicas("undo"))[0]
    await sim.service.delete_volume("undo")
    await sim.step(rounds=4)
    assert await sim.repo.volumes() == []
    (stone,) = [s for s in await sim.repo.tombstones() if s.replica == rep.id]
    assert stone.done_at is not None  # its node reported it gone: the deletion is done
    a = await beat(sim, rep.node, on_disk(rep.id))  # moved back from the trash
    assert [r for r in a.replicas if r.delete] == []
    assert [o.id for o in await sim.repo.orphans()] == [rep.id]
