"""A volume's QoS limits in the manager (PATCH /api/v1/volumes/{volume},
``Service.update_volume``): set at create, changed as a merge, checked with errors that
name the limit, handed to the engine's node in its assignments, and the held heartbeat of
that node (only) is answered at once, so the agent applies them within a second."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from cargohold.control.model import QosLimits
from cargohold.control.requests import VolumeUpdate
from cargohold.control.service import AttachRequest, VolumeCreate
from cargohold.errors import WrongState
from tests.unit.control.sim import Sim
from tests.unit.control.test_heartbeat_hold import poll

GiB = 1 << 30


async def attached(monkeypatch, qos: dict | None = None) -> tuple[Sim, str]:  # type: ignore[no-untyped-def, type-arg]
    sim = Sim(monkeypatch, heartbeat_interval=2.0)
    await sim.start()
    body = {"name": "data", "size_bytes": GiB, "replicas": 2}
    if qos is not None:
        body["qos"] = qos
    await sim.service.create_volume(VolumeCreate.model_validate(body))
    await sim.step(rounds=3)
    node = next(r["node"] for r in (await sim.service.volume("data"))["replicas"])
    await sim.service.attach("data", AttachRequest(node=node))
    await sim.step(rounds=3)
    return sim, node


def engine_qos(sim: Sim, node: str) -> dict:  # type: ignore[type-arg]
    last = sim.nodes[node].last
    assert last is not None
    return next(e.qos for e in last.engines if e.volume == "data")


async def test_limits_set_at_create_reach_the_engine_assignment(monkeypatch) -> None:
    sim, node = await attached(monkeypatch, {"max_iops": 1000, "max_bandwidth": 100 << 20})
    assert engine_qos(sim, node) == {"max_iops": 1000, "max_bandwidth": 100 << 20}
    v = await sim.service.volume("data")
    assert v["qos"]["limits"] == {"max_iops": 1000, "max_bandwidth": 100 << 20}


async def test_a_change_is_a_merge_and_wakes_only_the_engine_node(monkeypatch) -> None:
    sim, node = await attached(monkeypatch, {"max_iops": 1000, "max_bandwidth": 100 << 20})
    other = next(n for n in sim.nodes if n != node)
    here = asyncio.ensure_future(sim.service.heartbeat(node, poll(sim, node, 1.5)))
    there = asyncio.ensure_future(sim.service.heartbeat(other, poll(sim, other, 0.8)))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    change = VolumeUpdate.model_validate({"qos": {"max_iops": 2000, "max_bandwidth": None}})
    v = await sim.service.update_volume("data", change)
    assert v["qos"]["limits"] == {"max_iops": 2000}
    a = await here
    assert time.monotonic() - t0 < 0.5, "the engine's node hears of new limits at once"
    assert next(e.qos for e in a.engines if e.volume == "data") == {"max_iops": 2000}
    t1 = time.monotonic()
    await there
    assert time.monotonic() - t1 >= 0.5, "a node the change does not concern stays held"
    # the same change again changes nothing (idempotent: no write, no wake-up)
    v2 = await sim.service.update_volume("data", change)
    assert v2["qos"] == v["qos"]


async def test_removing_every_limit_leaves_none(monkeypatch) -> None:
    sim, node = await attached(monkeypatch, {"max_iops": 1000})
    await sim.service.update_volume(
        "data", VolumeUpdate.model_validate({"qos": {"max_iops": None}})
    )
    await sim.step(rounds=1)
    assert engine_qos(sim, node) == {}


@pytest.mark.parametrize(
    ("qos", "words"),
    [
        ({"max_iops": 5}, "max_iops=5 is not valid: use an integer from 10 to 10000000"),
        ({"max_bandwidth": 1}, "max_bandwidth=1 is not valid"),
        ({"burst_seconds": 100}, "burst_seconds=100 is not valid: use a number of seconds"),
        ({"iops": 10}, "unknown qos limit 'iops'"),
        ({"max_iops": "10"}, "max_iops='10'"),
        ({"weight": 0}, "weight=0 is not valid: use an integer from 1 to 1000, or unset for 100"),
        ({"weight": 1001}, "weight=1001 is not valid"),
        ({"weight": 2.5}, "weight=2.5 is not valid"),
        ({"min_iops": 5}, "min_iops=5 is not valid: use an integer from 10"),
    ],
)
def test_a_bad_limit_is_refused_naming_it(qos: dict, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError, match=words.replace("(", r"\(")):
        VolumeUpdate.model_validate({"qos": qos})


async def test_a_weight_and_minimum_reach_the_engine_and_change_online(monkeypatch) -> None:
    sim, node = await attached(monkeypatch, {"weight": 300, "min_iops": 500})
    assert engine_qos(sim, node) == {"weight": 300, "min_iops": 500}
    change = VolumeUpdate.model_validate({"qos": {"weight": 50}})
    v = await sim.service.update_volume("data", change)
    assert v["qos"]["limits"] == {"weight": 50, "min_iops": 500}


def test_records_without_limits_read_as_unlimited() -> None:
    assert QosLimits().limits() == {}


async def test_a_volume_being_deleted_takes_no_change(monkeypatch) -> None:
    sim = Sim(monkeypatch)
    await sim.start()
    await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB, replicas=1))
    await sim.service.delete_volume("data")
    with pytest.raises(WrongState):
        await sim.service.update_volume(
            "data", VolumeUpdate.model_validate({"qos": {"max_iops": 100}})
        )


def test_one_unit_rule_for_rates_and_another_for_sizes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Rates (limits, --node-bandwidth, the engine's bandwidth settings) are Kubernetes
    quantities: M = 10^6, Mi = 2^20; sizes refuse the ambiguous M (docs/qos.md, "Units")."""
    from cargohold.errors import ConfigError, InvalidArgument
    from cargohold.qos_limits import parse_bandwidth, parse_text
    from cargohold.settings import EngineSettings, parse_size

    assert parse_text("max_bandwidth", "200M") == 200_000_000
    assert parse_text("max_bandwidth", "200MB/s") == 200_000_000
    assert parse_text("max_bandwidth", "100Mi") == 100 << 20
    assert parse_text("max_bandwidth", "100MiB/s") == 100 << 20
    assert parse_bandwidth("400Mi") == 400 << 20 and parse_bandwidth("1G") == 10**9
    assert parse_bandwidth("0") == 0
    with pytest.raises(InvalidArgument, match="Kubernetes quantity: 100Mi = 100 x 2"):
        parse_bandwidth("fast")
    with pytest.raises(ConfigError, match="ambiguous"):
        parse_size("200M", "--size")
    assert parse_size("200Mi") == 200 << 20
    monkeypatch.setenv("CARGOHOLD_ENGINE_REBUILD_BANDWIDTH", "200M")
    monkeypatch.setenv("CARGOHOLD_ENGINE_IMPORT_BANDWIDTH", "64Mi")
    s = EngineSettings()
    assert s.rebuild_bandwidth == 200_000_000 and s.import_bandwidth == 64 << 20
    assert EngineSettings(restore_bandwidth=5).restore_bandwidth == 5  # numbers as they are
    monkeypatch.setenv("CARGOHOLD_ENGINE_RESTORE_BANDWIDTH", "lots")
    with pytest.raises(ConfigError, match=r"CARGOHOLD_ENGINE_RESTORE_BANDWIDTH.*not a bandwidth"):
        EngineSettings()
