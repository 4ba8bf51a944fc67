"""Group snapshots stepped through the simulated cluster (sim.py): the manager's real
service, heartbeat and reconcilers, simulated agents that run each operation at once.
Holds one after another in sorted order, then the snapshots inside the holds, then the
releases; all or nothing when an engine refuses; idempotency by name; deletion.
"""

from __future__ import annotations

import pytest

from cargohold.control import group_snapshots, service_groups
from cargohold.control.model import OperationAssignment
from cargohold.control.requests import GroupSnapshotCreate
from cargohold.control.service import AttachRequest, SnapshotCreate, VolumeCreate
from cargohold.errors import AlreadyExists, Busy, NotFound, WrongState
from tests.unit.control.sim import Sim

GiB = 1 << 30


async def make(monkeypatch, attach: dict[str, str]) -> Sim:  # type: ignore[no-untyped-def]
    sim = Sim(monkeypatch, nodes=3)
    monkeypatch.setattr(group_snapshots, "now", sim.clock)
    monkeypatch.setattr(service_groups, "now", sim.clock)
    await sim.start()
    for name, node in attach.items():
        await sim.service.create_volume(VolumeCreate(name=name, size_bytes=GiB, replicas=2))
        await sim.step(rounds=2)
        await sim.service.attach(name, AttachRequest(node=node))
    await sim.step(rounds=2)
    return sim


def assigned(sim: Sim) -> list[OperationAssignment]:
    return [o for n in sim.nodes.values() if n.last for o in n.last.operations]


async def test_holds_in_order_then_snapshots_then_releases(monkeypatch) -> None:
    sim = await make(monkeypatch, {"wal": "node-1", "data": "node-2"})
    g = await sim.service.create_group_snapshot(
        GroupSnapshotCreate(name="g1", volumes=["wal", "data"])
    )
    assert g["volumes"] == ["data", "wal"] and g["state"] == "holding"
    # the same request again: the same group; other volumes under that name: refused
    again = await sim.service.create_group_snapshot(
        GroupSnapshotCreate(name="g1", volumes=["data", "wal"])
    )
    assert again["created_at"] == g["created_at"]
    with pytest.raises(AlreadyExists):
        await sim.service.create_group_snapshot(GroupSnapshotCreate(name="g1", volumes=["data"]))
    # a volume in a group being taken is in no other one meanwhile
    with pytest.raises(Busy):
        await sim.service.create_group_snapshot(GroupSnapshotCreate(name="g2", volumes=["wal"]))
    seen: list[tuple[str, str]] = []
    for _ in range(12):
        # run the reconcilers first: an operation is assigned on the next heartbeat
        for r in sim.recs:
            await r.run_once()
        seen += [
            (o.kind.value, o.volume) for o in assigned(sim) if (o.kind.value, o.volume) not in seen
        ]
        await sim.step()
        if (await sim.service.group_snapshot("g1"))["state"] == "ready":
            break
    g = await sim.service.group_snapshot("g1")
    assert g["state"] == "ready", g
    kinds = [k for k, _ in seen]
    # data's hold before wal's (sorted), both before any snapshot, snapshots before releases
    assert seen[:2] == [("hold", "data"), ("hold", "wal")], seen
    assert kinds.index("snapshot-create") > 1 and kinds.index("release") > kinds.index(
        "snapshot-create"
    ), seen
    snap_ops = [o for o in await sim.service.operations(None) if o["kind"] == "snapshot-create"]
    assert {o["args"]["hold"] for o in snap_ops} == {"g1"}
    for v in ("data", "wal"):
        [s] = await sim.service.snapshots(v)
        assert (s["name"], s["state"]) == ("g1", "ready")
        assert s["labels"] == {group_snapshots.GROUP_LABEL: "g1"}
    # deleted: its snapshots go, then the record
    await sim.service.delete_group_snapshot("g1")
    await sim.step(rounds=4)
    with pytest.raises(NotFound):
        await sim.service.group_snapshot("g1")
    assert await sim.service.snapshots("data") == [] and await sim.service.snapshots("wal") == []


async def test_a_failed_hold_releases_all_and_leaves_nothing(monkeypatch) -> None:
    sim = await make(monkeypatch, {"data": "node-1", "wal": "node-2"})
    sim.nodes["node-2"].fail_ops = True  # wal's engine refuses (its hold fails)
    await sim.service.create_group_snapshot(GroupSnapshotCreate(name="g1", volumes=["data", "wal"]))
    await sim.step(rounds=10)
    g = await sim.service.group_snapshot("g1")
    assert g["state"] == "failed" and "volume wal: hold" in g["error"], g
    ops = await sim.service.operations(None)
    kinds = sorted((o["kind"], o["volume"]) for o in ops)
    # data was held, then released; no snapshot was taken anywhere
    assert ("hold", "data") in kinds and ("release", "data") in kinds, kinds
    assert not any(k == "snapshot-create" for k, _ in kinds), kinds
    assert await sim.service.snapshots("data") == [] and await sim.service.snapshots("wal") == []
    # the same request again after the failure: taken afresh
    sim.nodes["node-2"].fail_ops = False
    g = await sim.service.create_group_snapshot(
        GroupSnapshotCreate(name="g1", volumes=["data", "wal"])
    )
    assert g["state"] == "holding"
    await sim.step(rounds=10)
    assert (await sim.service.group_snapshot("g1"))["state"] == "ready"


async def test_a_failed_snapshot_deletes_the_ones_taken(monkeypatch) -> None:
    sim = await make(monkeypatch, {"data": "node-1", "wal": "node-2"})
    await sim.service.create_group_snapshot(GroupSnapshotCreate(name="g1", volumes=["data", "wal"]))
    for _ in range(10):
        await sim.step()
        if (await sim.service.group_snapshot("g1"))["state"] == "snapshotting":
            break
    assert (await sim.service.group_snapshot("g1"))["state"] == "snapshotting"
    sim.nodes["node-2"].fail_ops = True  # wal's snapshot fails; data's is taken
    await sim.step(rounds=10)
    g = await sim.service.group_snapshot("g1")
    assert g["state"] == "failed" and "volume wal: snapshot" in g["error"], g
    assert await sim.service.snapshots("data") == []  # taken, then deleted: all or nothing
    assert [s["state"] for s in await sim.service.snapshots("wal")] in ([], ["error"])


async def test_refused_before_anything_is_held(monkeypatch) -> None:
    sim = await make(monkeypatch, {"data": "node-1", "wal": "node-2"})
    with pytest.raises(NotFound):
        await sim.service.create_group_snapshot(
            GroupSnapshotCreate(name="g1", volumes=["data", "nope"])
        )
    await sim.service.create_snapshot("wal", SnapshotCreate(name="g1"))
    with pytest.raises(AlreadyExists, match="wal already has a snapshot named g1"):
        await sim.service.create_group_snapshot(
            GroupSnapshotCreate(name="g1", volumes=["data", "wal"])
        )
    with pytest.raises(NotFound):
        await sim.service.group_snapshot("g1")
    assert not [o for o in await sim.service.operations(None) if o["kind"] == "hold"]
    # a group being taken is not deleted under it
    await sim.service.create_group_snapshot(GroupSnapshotCreate(name="g2", volumes=["data"]))
    with pytest.raises(WrongState):
        await sim.service.delete_group_snapshot("g2")


async def test_a_detached_volume_keeps_its_engine_through_the_group(monkeypatch) -> None:
    sim = await make(monkeypatch, {"data": "node-1"})
    await sim.service.create_volume(VolumeCreate(name="cold", size_bytes=GiB, replicas=2))
    await sim.step(rounds=2)
    await sim.service.create_group_snapshot(
        GroupSnapshotCreate(name="g1", volumes=["cold", "data"])
    )
    await sim.step(rounds=10)
    assert (await sim.service.group_snapshot("g1"))["state"] == "ready"
    assert [s["state"] for s in await sim.service.snapshots("cold")] == ["ready"]
