"""The node latency target (agent/latency_target.py): the AIMD controller's properties
under hypothesis, NodeShare dividing its budget, and the agent's sharing loop
(Engines.share_node) holding a simulated node's latency with fake engines."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.agent.engine_process import EngineProcess, EngineState
from cargohold.agent.engines import Engines
from cargohold.agent.fair_share import NodeShare, latency_view
from cargohold.agent.latency_target import (
    DOWN,
    FLOOR_PER_VOLUME,
    USED,
    LatencyTarget,
    floor_for,
    mean_latency,
    service,
)
from cargohold.agent.settings import AgentSettings
from cargohold.control.model import EngineAssignment
from cargohold.errors import ConfigError
from cargohold.metrics.node_stats import node_families

targets = st.floats(50, 100_000)
floors = st.floats(200, 20_000)
demands = st.floats(1, 1e6)


@given(
    targets,
    st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 1e6)), st.floats(0, 1e7), floors)),
)
def test_the_budget_is_never_below_the_floor(target, windows):
    c = LatencyTarget(target)
    for latency, did, floor in windows:
        b = c.step(latency, did, floor)
        if latency is not None:
            assert b >= floor
        assert b == c.budget and b > 0


@given(targets, demands, floors, st.floats(1.01, 100))
def test_a_constant_violation_brings_the_budget_down_to_the_floor(target, demand, floor, over):
    c = LatencyTarget(target)
    did = demand  # the node does what it wants while nothing holds it ...
    for k in range(200):
        b = c.step(target * over, did, floor)
        assert b <= max(floor, DOWN ** (k + 1) * demand) * (1 + 1e-9)
        did = min(b, demand)  # ... then what the budget lets through
    assert b == floor


@given(targets, demands, floors, st.floats(0, 1), st.floats(1, 1e6))
def test_latency_under_target_lifts_the_budget(target, demand, floor, under, start):
    c = LatencyTarget(target, budget=max(floor, start))
    for _ in range(200):
        did = min(c.budget, demand)  # held volumes take what they are given
        before = c.budget
        c.step(target * under, did, floor, held=did < demand)
        if math.isfinite(c.budget):  # it grows, but never far past what the node used
            assert c.budget >= before
            assert c.budget <= max(floor, before, USED * did) * (1 + 1e-9)
    assert c.budget == math.inf  # it grew past what the volumes want: sharing stops
    c.step(target * under, demand, floor, held=False)
    assert c.budget == math.inf  # and stays lifted while the latency is met


@given(targets, st.floats(1, 1e6), st.floats(0, 1), floors, st.floats(1.01, 100))
def test_a_violation_cuts_the_held_volumes_part(target, did, held_part, floor, over):
    c = LatencyTarget(target)
    held_did = did * held_part
    b = c.step(target * over, did, floor, held_did=held_did)
    assert b == pytest.approx(max(floor, did - (1 - DOWN) * held_did))
    # every volume held, the violation going on: down to the floor
    for _ in range(200):
        b = c.step(target * over, min(b, did), floor, held_did=min(b, did))
    assert b == floor


def test_an_unused_budget_does_not_grow():
    c = LatencyTarget(1000, budget=3000)
    assert c.step(500, 2500, 200) == pytest.approx(3350)  # used: x 1.1 + 50
    # the held volume uses its share, the others keep headroom: the node did 2,000 of it
    assert c.step(500, 2000, 200) == pytest.approx(3350)  # stays (not 3,735), never shrinks
    assert c.step(500, 2600, 200) == pytest.approx(3640)  # at most 1.4 x what it did
    assert c.step(500, 1000, 200, held=False) == math.inf  # nobody wants more: lifted


def test_no_requests_teach_nothing_and_the_floor_counts_minimums():
    c = LatencyTarget(1000, budget=800)
    assert c.step(None, 0, 5000) == 800 and c.latency_us is None
    assert floor_for([]) == 2 * FLOOR_PER_VOLUME
    assert floor_for([0, 0, 0]) == 3 * FLOOR_PER_VOLUME
    assert floor_for([2000, 0]) == 2000 + FLOOR_PER_VOLUME
    assert mean_latency(0, 0) is None and mean_latency(4, 1000) == 250


def test_service_reads_the_engine_status_not_flushes():
    st_ = {
        "latency_log2_us": {"read": {"8": 3, "9": 1}, "write": {"10": 2}, "flush": {"12": 9}},
        "latency_sum_us": {"read": 1400, "write": 2400, "flush": 40000},
    }
    assert service(st_) == (6, 3800)
    assert service({}) == (0, 0)
    assert service({"latency_log2_us": "junk", "latency_sum_us": None}) == (0, 0)


def status(ops: float, us: float, throttled: int = 0) -> dict[str, Any]:
    return {
        "counters": {"read": ops, "write": 0},
        "latency_log2_us": {"read": {"9": ops}},
        "latency_sum_us": {"read": us},
        "qos": {"throttled_requests_total": throttled},
    }


def test_node_share_divides_the_target_s_budget_by_weight():
    ns = NodeShare(math.inf, target=LatencyTarget(1000))
    heavy, light = {"weight": 100}, {"weight": 25}
    ns.divide(0.0, {"v": (heavy, status(0, 0)), "a": (light, status(0, 0))})
    # 1 s: the victim did 500, the aggressor 9,500, at 3 ms each: too slow. Nobody was
    # held back yet: the budget becomes what the node did, and the division starts
    got = ns.step(1.0, {"v": (heavy, status(500, 1.5e6)), "a": (light, status(9500, 28.5e6))})
    assert ns.target is not None and ns.target.budget == pytest.approx(10_000)
    # the victim is not held: it keeps 1.5 x its rate + 50, the aggressor the rest
    assert got == {"v": 800, "a": 9200}
    # still too slow, the aggressor held back (it did its 9,200): 20% of that is cut
    got = ns.step(2.0, {"v": (heavy, status(1000, 3e6)), "a": (light, status(18700, 56e6, 9))})
    assert ns.target.budget == pytest.approx(9700 - 0.2 * 9200)
    assert ns.iops_budget == pytest.approx(7860)
    assert got == {"v": 800, "a": 7060}  # the victim untouched
    view = latency_view(ns)
    assert view is not None and view["target_us"] == 1000 and view["budget"] == 7860
    # node_iops set too: the lower of the two is divided
    ns2 = NodeShare(4000, target=LatencyTarget(1000))
    ns2.divide(0.0, {"v": (heavy, status(0, 0)), "a": (light, status(0, 0))})
    ns2.divide(1.0, {"v": (heavy, status(500, 1.5e6)), "a": (light, status(9500, 28.5e6))})
    assert ns2.iops_budget == 4000
    assert latency_view(NodeShare(100)) is None


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 1000)), max_size=6))
def test_idle_volumes_do_not_move_the_budget(idle):
    def run(with_idle: bool) -> tuple[float, dict[str, int | None]]:
        ns = NodeShare(math.inf, target=LatencyTarget(1000))
        got: dict[str, int | None] = {}
        for t in range(6):
            engines: dict[str, Any] = {
                "v": ({"weight": 100}, status(500 * t, 500 * t * 2500.0)),
                "a": ({"weight": 25}, status(9000 * t, 9000 * t * 2500.0, t)),
            }
            if with_idle:  # counters that never move (and their minimums)
                for i, (ops, minimum) in enumerate(idle):
                    engines[f"idle{i}"] = ({"min_iops": minimum}, status(ops, ops * 99.0))
            got = ns.step(float(t), engines)
        assert ns.target is not None
        return ns.target.budget, {k: got[k] for k in ("v", "a")}

    assert run(True) == run(False)


def test_the_setting_reads_durations_and_names_itself_in_errors(monkeypatch):
    assert AgentSettings(node_latency_target="2ms").node_latency_target == 2000
    assert AgentSettings(node_latency_target="1500us").node_latency_target == 1500
    assert AgentSettings(node_latency_target="750").node_latency_target == 750
    assert AgentSettings().node_latency_target == 0
    monkeypatch.setenv("CARGOHOLD_AGENT_NODE_LATENCY_TARGET", "0.5ms")
    assert AgentSettings().node_latency_target == 500
    for bad in ("fast", "10", "-2ms", "1h", "20s"):
        with pytest.raises(ConfigError, match=r"node_latency_target.*50us to 10s"):
            AgentSettings(node_latency_target=bad)


def test_the_node_metrics_show_the_budget_and_the_latency():
    def samples(latency: dict[str, Any] | None) -> dict[str, float]:
        fams = node_families("n1", [], {}, {}, None, 0, True, latency)
        return {
            s.name: s.value for f in fams for s in f.samples if s.name.startswith("cargohold_node")
        }

    assert samples(None) == {}
    got = samples({"target_us": 2000.0, "latency_us": 1500.0, "budget": 4000.0})
    assert got == {
        "cargohold_node_latency_target_seconds": 0.002,
        "cargohold_node_service_latency_seconds": 0.0015,
        "cargohold_node_qos_budget_iops": 4000.0,
    }
    got = samples({"target_us": 2000.0, "latency_us": None, "budget": math.inf})
    assert got == {"cargohold_node_latency_target_seconds": 0.002}


# --- the agent's loop against fake engines on a simulated node ---------------------------


class SimNode:
    """Engines on one disk: each does what it wants up to its limit; every request takes
    300 µs plus 0.5 µs per IOPS the node does above 2,000 (so 3,400 IOPS meet 1 ms)."""

    def __init__(self, wants: dict[str, float]) -> None:
        self.wants = wants
        self.limits: dict[str, dict[str, Any]] = {v: {} for v in wants}
        self.ops = dict.fromkeys(wants, 0.0)
        self.us = dict.fromkeys(wants, 0.0)
        self.held = dict.fromkeys(wants, 0)
        self.at = asyncio.get_running_loop().time()
        self.latencies: list[float] = []

    def rate(self, v: str) -> float:
        return min(self.wants[v], float(self.limits[v].get("max_iops") or math.inf))

    def advance(self) -> None:
        now = asyncio.get_running_loop().time()
        dt, self.at = now - self.at, now
        total = sum(self.rate(v) for v in self.wants)
        latency = 300 + 0.5 * max(0.0, total - 2000)
        if total:
            self.latencies.append(latency)
        for v in self.wants:
            self.ops[v] += self.rate(v) * dt
            self.us[v] += self.rate(v) * dt * latency
            self.held[v] += self.rate(v) < self.wants[v]


class FakeLink:
    def __init__(self, node: SimNode, volume: str) -> None:
        self.node, self.volume = node, volume

    async def status(self, timeout: float = 2.0) -> dict[str, Any]:
        n, v = self.node, self.volume
        n.advance()
        st_ = status(n.ops[v], n.us[v], n.held[v])
        st_["qos"]["limits"] = n.limits[v]
        return st_

    async def call(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        assert request["op"] == "qos"
        self.node.advance()
        self.node.limits[self.volume] = dict(request["limits"])
        return {"qos": {"limits": request["limits"], "throttled_requests_total": 0}}


async def test_the_agent_loop_holds_the_node_to_its_latency_target(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(EngineProcess, "running", property(lambda self: True))
    node = SimNode({"victim": 500.0, "aggressor": 20_000.0})
    engines = Engines("127.0.0.1", "/nonexistent", dict, lambda: None, asyncio.Event(),
                      lambda *a, **k: None, lambda v: "/nonexistent.sock")  # fmt: skip
    for volume, weight in (("victim", 100), ("aggressor", 25)):
        spec = EngineAssignment(volume=volume, epoch=1, size_bytes=1 << 20,
                                replicas=[f"{volume}-r1@h:1"], qos={"weight": weight})  # fmt: skip
        eng = EngineProcess(spec, "127.0.0.1", "/nonexistent.sock", "/dev/null")
        eng.credentials = lambda volume: None
        eng.state = EngineState.RUNNING
        eng.status = {"volume": volume, "qos": {"limits": {}}}
        eng.link = FakeLink(node, volume)  # type: ignore[assignment]
        engines.procs[volume] = eng
    every = 0.02
    task = asyncio.create_task(engines.share_node(0, 0, every=every, latency_target_us=1000))
    try:
        await asyncio.sleep(60 * every)
        # settled: the aggressor held near what meets 1 ms, the victim not held at all
        sharing = engines.sharing
        assert sharing is not None and sharing.target is not None
        assert math.isfinite(sharing.target.budget)
        aggr, victim = engines.procs["aggressor"], engines.procs["victim"]
        assert aggr.fair_iops is not None and aggr.fair_iops <= 3400 * 1.2
        assert victim.fair_iops is None or victim.fair_iops >= 500
        assert node.rate("victim") == 500
        recent = sorted(node.latencies[-30:])
        assert recent[len(recent) // 2] <= 1000 * 1.3  # the median window meets the target
        assert max(node.latencies[:3]) > 5000  # it did not, unheld
        # the aggressor goes quiet: within a few windows the budget is lifted, no shares
        node.wants["aggressor"] = 0.0
        await asyncio.sleep(40 * every)
        assert sharing.target.budget == math.inf
        assert aggr.fair_iops is None and victim.fair_iops is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_lone_busy_volume_lifts_the_budget():
    ns = NodeShare(math.inf, target=LatencyTarget(1000))
    heavy, light = {"weight": 100}, {"weight": 25}
    ns.divide(0.0, {"v": (heavy, status(0, 0)), "a": (light, status(0, 0))})
    ns.divide(1.0, {"v": (heavy, status(500, 1.5e6)), "a": (light, status(9500, 28.5e6))})
    assert ns.target is not None and ns.target.budget == pytest.approx(10_000)
    # the victim goes idle: the aggressor alone is slow, but there is nobody to share with
    got = ns.step(2.0, {"v": (heavy, status(500, 1.5e6)), "a": (light, status(19500, 58.5e6))})
    assert ns.target.budget == math.inf and got == {"v": None, "a": None}
    assert ns.target.latency_us == 3000  # still shown


def test_the_agent_command_takes_the_target_and_refuses_a_bad_one() -> None:
    from typer.testing import CliRunner

    from cargohold.cli.main import app

    r = CliRunner().invoke(app, ["agent", "--help"])
    assert r.exit_code == 0 and "--node-latency-target" in r.output, r.output
    r = CliRunner().invoke(app, ["agent", "--node", "n1", "--node-latency-target", "fast"])
    assert r.exit_code == 2 and "node_latency_target" in r.output, r.output
    assert "50us to 10s" in " ".join(r.output.split()), r.output


def test_a_held_budget_keeps_the_node_shared_below_the_hysteresis():
    ns = NodeShare(math.inf, target=LatencyTarget(1000, budget=4000))
    heavy, light = {"weight": 100}, {"weight": 25}
    ns.divide(0.0, {"v": (heavy, status(0, 0)), "a": (light, status(0, 0, 0))})
    # under the target, the aggressor held back, the node did 2,000 (< 60% of 4,000):
    # without a target that would end sharing; the target keeps it until nobody is held
    got = ns.step(1.0, {"v": (heavy, status(1000, 3e5)), "a": (light, status(1000, 3e5, 5))})
    assert ns.target is not None and ns.target.budget == 4000
    assert got["a"] is not None and got["v"] is not None
    got = ns.step(2.0, {"v": (heavy, status(2000, 6e5)), "a": (light, status(1100, 3.3e5, 5))})
    assert ns.target.budget == math.inf and got == {"v": None, "a": None}
    # a node_iops budget alone keeps its hysteresis
    plain = NodeShare(4000)
    plain.divide(0.0, {"v": (heavy, status(0, 0)), "a": (light, status(0, 0, 0))})
    assert plain.step(1.0, {"v": (heavy, status(1000, 0)), "a": (light, status(1000, 0, 5))}) == {
        "v": None,
        "a": None,
    }
