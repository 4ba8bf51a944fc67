"""A detach is refused while the engine reports NBD clients (issue 23, item 1): a mounted
filesystem must not lose its device. Over the simulated cluster (sim.py)."""

from __future__ import annotations

import pytest

from cargohold.control.service import AttachRequest, VolumeCreate
from cargohold.errors import Busy
from tests.unit.control.sim import Sim

GiB = 1 << 30


async def attached(monkeypatch) -> Sim:  # type: ignore[no-untyped-def]
    sim = Sim(monkeypatch, nodes=3)
    await sim.start()
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
    await sim.step(rounds=2)
    await sim.service.attach("data", AttachRequest(node="node-2"))
    await sim.step(rounds=3)
    assert (await sim.service.volume("data"))["state"] == "attached"
    return sim


async def test_detach_is_refused_while_clients_are_connected_and_forced_works(
    monkeypatch,
) -> None:
    sim = await attached(monkeypatch)
    engine = sim.nodes["node-2"].engines["data"]
    engine.nbd_clients = [
        {"peer": "unix", "export": "data"},
        {"peer": "10.0.0.9", "export": "data"},
    ]
    await sim.step(rounds=1)
    v = await sim.service.volume("data")
    assert v["nbd_clients"] == [
        {"peer": "unix", "export": "data"},
        {"peer": "10.0.0.9", "export": "data"},
    ]
    with pytest.raises(Busy) as e:
        await sim.service.detach("data")
    assert "2 NBD client(s)" in str(e.value) and "10.0.0.9" in str(e.value)
    assert "unix" in str(e.value) and "node-2" in str(e.value)
    assert (await sim.service.volume("data"))["attached_node"] == "node-2"  # unchanged
    await sim.service.detach("data", force=True)
    await sim.step(rounds=3)
    assert (await sim.service.volume("data"))["state"] == "detached"


async def test_detach_goes_through_once_the_clients_left(monkeypatch) -> None:
    sim = await attached(monkeypatch)
    engine = sim.nodes["node-2"].engines["data"]
    engine.nbd_clients = [{"peer": "unix", "export": "data"}]
    await sim.step(rounds=1)
    with pytest.raises(Busy):
        await sim.service.detach("data")
    engine.nbd_clients = []
    await sim.step(rounds=1)
    assert (await sim.service.volume("data"))["nbd_clients"] == []
    await sim.service.detach("data")
    await sim.step(rounds=3)
    assert (await sim.service.volume("data"))["state"] == "detached"


async def test_malformed_client_entries_are_ignored(monkeypatch) -> None:
    sim = await attached(monkeypatch)
    engine = sim.nodes["node-2"].engines["data"]
    engine.nbd_clients = ["x", {"export": "data"}, {"peer": 5}]
    await sim.step(rounds=1)
    assert (await sim.service.volume("data"))["nbd_clients"] == []


def test_a_replica_on_a_down_node_shows_mode_err_even_before_the_engine_noticed() -> None:
    from cargohold.control.model import Node, Replica, ReplicaMode
    from cargohold.control.views import replica_view

    rep = Replica(id="r1", volume="v", node="n3", disk="d", exists=True, mode=ReplicaMode.RW)
    down = Node(name="n3", address="10.0.0.3", down_since=1.0)
    up = Node(name="n3", address="10.0.0.3")
    assert (replica_view(rep, down, True)["mode"], replica_view(rep, down, True)["state"]) == (
        "ERR",
        "failed",
    )
    assert replica_view(rep, up, True)["mode"] == "RW"
    assert replica_view(rep, down, False)["mode"] is None  # no engine: no mode at all


async def test_a_snapshot_records_the_size_its_replica_reported(monkeypatch) -> None:
    from cargohold.control.service import SnapshotCreate

    sim = await attached(monkeypatch)
    sim.op_result = lambda oa: {"snapshot": {"name": "s1", "size_bytes": 5 << 20}}
    op = await sim.service.create_snapshot("data", SnapshotCreate(name="s1"))
    await sim.step(rounds=4)
    assert (await sim.service.operation(op["id"]))["state"] == "succeeded"
    snaps = await sim.service.snapshots("data")
    assert [(s["name"], s["state"], s["size_bytes"]) for s in snaps] == [("s1", "ready", 5 << 20)]


def test_snapshot_size_from_a_result_is_checked() -> None:
    from cargohold.control.operation_results import snapshot_size

    assert snapshot_size({"snapshot": {"size_bytes": 4096}}, 0) == 4096
    for bad in (
        {},
        {"snapshot": None},
        {"snapshot": {"size_bytes": -1}},
        {"snapshot": {"size_bytes": True}},
        {"snapshot": {"size_bytes": "9"}},
    ):
        assert snapshot_size(bad, 7) == 7
