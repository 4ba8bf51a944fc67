"""The heartbeat as a long poll (Service.heartbeat, cargohold/control/watch.py): held while
the node's assignments are the ones the agent has, answered as soon as an API write or a
reconciler changes them, and never held past the hold, the interval, or a hang-up."""

from __future__ import annotations

import asyncio
import time

from cargohold.control.digests import report_digest
from cargohold.control.model import (
    Assignments,
    Heartbeat,
    Operation,
    Replica,
    ReplicaReport,
    Volume,
)
from cargohold.control.service import AttachRequest, SnapshotCreate, VolumeCreate
from cargohold.control.watch import ALL, affected
from tests.unit.control.sim import Sim

GiB = 1 << 30


async def settled(monkeypatch, **kw) -> Sim:  # type: ignore[no-untyped-def]
    sim = Sim(monkeypatch, heartbeat_interval=kw.pop("heartbeat_interval", 2.0), **kw)
    await sim.start()
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB, replicas=2))
    await sim.step(rounds=3)
    return sim


def poll(sim: Sim, node: str, hold: float, revision: str | None = None) -> Heartbeat:
    last = sim.nodes[node].last
    assert last is not None
    return Heartbeat(
        replica_port=9500,
        replicas=[  # what the node has, as the simulated agent reports it
            ReplicaReport(id=rid, volume=rid.rsplit("-r", 1)[0], generation=g)
            for rid, g in sim.nodes[node].replicas.items()
        ],
        assignments_revision=last.revision if revision is None else revision,
        hold=hold,
    )


async def timed(coro) -> tuple[Assignments, float]:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    a = await coro
    return a, time.monotonic() - t0


async def test_same_revision_is_held_until_the_hold_ends(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    before = sim.nodes["node-1"].last
    assert before is not None and before.revision
    a, took = await timed(sim.service.heartbeat("node-1", poll(sim, "node-1", 0.3)))
    assert 0.25 <= took < 1.5
    assert a.revision == before.revision


async def test_an_old_revision_is_answered_at_once(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    a, took = await timed(sim.service.heartbeat("node-1", poll(sim, "node-1", 1.5, "stale")))
    assert took < 0.5 and a.revision == sim.nodes["node-1"].last.revision  # type: ignore[union-attr]


async def test_no_hold_without_asking(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    _, took = await timed(sim.service.heartbeat("node-1", poll(sim, "node-1", 0.0)))
    assert took < 0.5


async def test_the_hold_never_passes_the_interval(monkeypatch) -> None:
    sim = await settled(monkeypatch, heartbeat_interval=0.2)
    _, took = await timed(sim.service.heartbeat("node-1", poll(sim, "node-1", 30.0)))
    assert took < 1.0


async def test_an_attach_wakes_the_held_heartbeat_of_its_node(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    node = next(r["node"] for r in (await sim.service.volume("data"))["replicas"])
    other = next(n for n in sim.nodes if n != node)
    here = asyncio.ensure_future(timed(sim.service.heartbeat(node, poll(sim, node, 1.5))))
    there = asyncio.ensure_future(timed(sim.service.heartbeat(other, poll(sim, other, 0.8))))
    await asyncio.sleep(0.05)
    assert sim.service.watch.held == 2
    await sim.service.attach("data", AttachRequest(node=node))
    for r in sim.recs:  # the engine reconciler writes the engine spec: that wakes `node`
        await r.run_once()
    a, took = await here
    assert took < 0.5, "the agent should hear of its new engine at once"
    assert [e.volume for e in a.engines] == ["data"]
    _, took_there = await there
    assert took_there >= 0.7, "a node the change does not concern stays held"


async def test_a_new_operation_wakes_the_node_of_its_maintenance_engine(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    nodes = sorted({r["node"] for r in (await sim.service.volume("data"))["replicas"]})
    held = {
        n: asyncio.ensure_future(timed(sim.service.heartbeat(n, poll(sim, n, 1.5)))) for n in nodes
    }
    await asyncio.sleep(0.05)
    await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))
    await asyncio.sleep(0.05)
    assert sim.service.watch.held == len(nodes)  # woken, looked: nothing for them yet
    for r in sim.recs:  # a maintenance engine on the first replica node
        await r.run_once()
    a, took = await held[nodes[0]]
    assert took < 0.5 and [e.purpose for e in a.engines] == ["maintenance"]
    for f in held.values():
        await f


async def test_a_hang_up_ends_the_hold(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    gone: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    held = asyncio.ensure_future(
        timed(sim.service.heartbeat("node-1", poll(sim, "node-1", 1.5), gone))
    )
    await asyncio.sleep(0.05)
    gone.set_result(None)
    _, took = await held
    assert took < 0.5
    assert sim.service.watch.held == 0


async def test_liveness_is_recorded_when_the_heartbeat_arrives(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    sim.clock.t += 100
    held = asyncio.ensure_future(sim.service.heartbeat("node-1", poll(sim, "node-1", 0.5)))
    await asyncio.sleep(0.05)
    assert (await sim.repo.node("node-1")).heartbeat_at == sim.clock.t  # before the answer
    await held


def test_what_wakes_whom() -> None:
    rep = Replica(id="v-r1", volume="v", node="n1", disk="d")
    assert affected(None, rep) == {"n1"}
    assert affected(rep, rep.model_copy(update={"deleting": True})) == {"n1"}
    assert affected(rep, rep.model_copy(update={"mode": "RW", "generation": 9})) == set()
    vol = Volume(name="v", size_bytes=GiB, replicas_wanted=1)
    assert affected(vol, vol.model_copy(update={"robustness": "healthy"})) == set()
    assert affected(vol, vol.model_copy(update={"size_bytes": 2 * GiB})) == ALL
    op = Operation(id="op-1", kind="expand", volume="v")
    assert affected(None, op) == ALL
    assert affected(op, op.model_copy(update={"state": "succeeded"})) == set()


async def test_a_held_heartbeat_that_ends_with_nothing_new_carries_no_lists(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    a = await sim.service.heartbeat("node-1", poll(sim, "node-1", 0.2))
    assert a.unchanged and a.revision == sim.nodes["node-1"].last.revision  # type: ignore[union-attr]
    assert a.replicas == [] and a.disks == []


async def test_the_same_report_is_sent_as_its_digest(monkeypatch) -> None:
    sim = await settled(monkeypatch)
    full = poll(sim, "node-1", 0.0)
    full.report_digest = report_digest(full)
    await sim.service.heartbeat("node-1", full)
    short = Heartbeat(report_digest=full.report_digest, same_report=True)
    sim.clock.t += 10
    a = await sim.service.heartbeat("node-1", short)
    assert not a.resend and a.replicas  # answered as if the whole report had come
    assert (await sim.repo.node("node-1")).heartbeat_at == sim.clock.t  # and it is alive
    v = await sim.service.volume("data")
    assert all(r["state"] != "pending" for r in v["replicas"])  # its replicas still exist
    # a manager that does not have it (restarted, another one) asks for the whole report
    a = await sim.service.heartbeat("node-2", Heartbeat(report_digest="nope", same_report=True))
    assert a.resend and not a.replicas


def test_a_short_node_down_after_makes_heartbeats_faster() -> None:
    """A node must not be marked down between two heartbeats: 2.5 of them per wait."""
    from cargohold.control.settings import ManagerSettings

    assert ManagerSettings().heartbeat_every == 2.0  # 2 s, down after 5 s
    assert ManagerSettings(node_down_after=2).heartbeat_every == 0.8
    assert ManagerSettings(heartbeat_interval=0.5, node_down_after=2).heartbeat_every == 0.5


async def test_the_hold_and_the_interval_sent_follow_node_down_after(monkeypatch) -> None:
    sim = await settled(monkeypatch, node_down_after=1.0)  # heartbeats every 0.4 s
    assert sim.nodes["node-1"].last.heartbeat_interval == 0.4  # type: ignore[union-attr]
    _, took = await timed(sim.service.heartbeat("node-1", poll(sim, "node-1", 2.0)))
    assert 0.3 <= took < 1.0
