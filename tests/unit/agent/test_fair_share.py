"""The division of a node's IOPS budget by weight (agent/fair_share.py): the properties of
``shares`` under hypothesis, and ``NodeShare`` turning statuses into limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.agent.fair_share import Claim, NodeShare, shares

REL = 1e-6

weights = st.integers(1, 1000)
demands = st.one_of(st.just(math.inf), st.floats(0, 1e6))
minimums = st.one_of(st.just(0.0), st.floats(0, 1e5))
claims = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.builds(Claim, weight=weights, minimum=minimums, demand=demands),
    min_size=1,
    max_size=8,
)
budgets = st.floats(1, 1e6)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(1.0, abs(a), abs(b))


@given(budgets, claims)
def test_never_over_budget_nor_demand_and_work_conserving(budget, cs):
    got = shares(budget, cs)
    assert set(got) == set(cs)
    assert sum(got.values()) <= budget * (1 + REL) + REL
    for k, c in cs.items():
        assert got[k] <= c.demand * (1 + REL) + REL
        assert got[k] >= 0
    floor = sum(min(c.minimum, c.demand) for c in cs.values())
    if floor <= budget:  # what one leaves unused goes to the others
        assert close(sum(got.values()), min(budget, sum(c.demand for c in cs.values())))


@given(budgets, claims)
def test_never_below_a_guaranteed_minimum_that_fits(budget, cs):
    got = shares(budget, cs)
    if sum(min(c.minimum, c.demand) for c in cs.values()) <= budget:
        for k, c in cs.items():
            assert got[k] >= min(c.minimum, c.demand) * (1 - REL) - REL


@given(budgets, st.dictionaries(st.text("abcd", min_size=1), weights, min_size=1, max_size=6))
def test_unbounded_demands_share_in_proportion_to_weights(budget, ws):
    got = shares(budget, {k: Claim(weight=w) for k, w in ws.items()})
    total = sum(ws.values())
    for k, w in ws.items():
        assert close(got[k], budget * w / total)


@given(budgets, claims)
def test_among_volumes_that_want_more_shares_follow_weights(budget, cs):
    """A volume that got less than its demand and more than its minimum got exactly its
    weight's share of the level: any two such volumes split in proportion to weights."""
    got = shares(budget, cs)
    if sum(min(c.minimum, c.demand) for c in cs.values()) > budget:
        return
    wanting = [
        k
        for k, c in cs.items()
        if got[k] < c.demand * (1 - 1e-4) and got[k] > c.minimum * (1 + 1e-4) + 1e-3
    ]
    for a in wanting:
        for b in wanting:
            assert math.isclose(got[a] / cs[a].weight, got[b] / cs[b].weight, rel_tol=1e-4)


def test_unused_share_is_redistributed_and_minimum_holds():
    got = shares(1000, {"a": Claim(100), "b": Claim(100, demand=100), "c": Claim(100)})
    assert math.isclose(got["b"], 100) and math.isclose(got["a"], 450)
    got = shares(1000, {"a": Claim(900), "b": Claim(100, minimum=300)})
    assert math.isclose(got["b"], 300) and math.isclose(got["a"], 700)
    got = shares(100, {"a": Claim(minimum=300), "b": Claim(minimum=100)})
    assert math.isclose(got["a"], 75) and math.isclose(got["b"], 25)


def status(ops: int, throttled: int = 0) -> dict:
    return {"counters": {"read": ops, "write": 0}, "qos": {"throttled_requests_total": throttled}}


def test_node_share_limits_only_under_contention():
    ns = NodeShare(budget=1000)
    heavy, light = {"weight": 300}, {}
    assert ns.step(0.0, {"a": (heavy, status(0)), "b": (light, status(0))}) == {
        "a": None,
        "b": None,
    }
    # both busy, together below 90% of the budget: no limits
    assert ns.step(1.0, {"a": (heavy, status(400)), "b": (light, status(400))}) == {
        "a": None,
        "b": None,
    }
    # both busy at the budget: shares by weight (both held back from now on)
    got = ns.step(2.0, {"a": (heavy, status(900, 1)), "b": (light, status(1000, 1))})
    assert got == {"a": 750, "b": 250}
    # still contended between OFF and ON
    got = ns.step(3.0, {"a": (heavy, status(1650, 2)), "b": (light, status(1250, 2))})
    assert got == {"a": 750, "b": 250}
    # b goes idle: a lone busy volume is never limited
    got = ns.step(4.0, {"a": (heavy, status(2650, 3)), "b": (light, status(1250, 2))})
    assert got == {"a": None, "b": None}


def test_node_share_keeps_a_volumes_own_limit_and_restart():
    ns = NodeShare(budget=1000)
    a, b = {"max_iops": 100}, {"min_iops": 50}
    ns.step(0.0, {"a": (a, status(0)), "b": (b, status(0))})
    got = ns.step(1.0, {"a": (a, status(100, 5)), "b": (b, status(900, 5))})
    assert got == {"a": 100, "b": 900}  # a cannot use more than its own 100: b gets the rest
    # a restarted engine (counters went back) has no rate yet: not busy this round
    got = ns.step(2.0, {"a": (a, status(3)), "b": (b, status(1800, 9))})
    assert got == {"a": None, "b": None}


# --- bandwidth (NodeShare's second budget, --node-bandwidth) ---------------------------
MiB = 1 << 20


def bw_status(ops: int, nbytes: int, throttled: int = 0) -> dict:
    return {
        "counters": {"read": ops, "write": 0, "read_bytes": nbytes, "written_bytes": 0},
        "qos": {"throttled_requests_total": throttled},
    }


@given(budgets.map(lambda b: b * 1000), claims.map(lambda cs: cs))
def test_bandwidth_budgets_share_like_iops_ones(budget, cs):
    """The same water filling at byte scale: within budget and demand, minimums kept, what
    one leaves unused goes to the others."""
    scaled = {k: Claim(c.weight, c.minimum * 1000, c.demand * 1000) for k, c in cs.items()}
    got = shares(budget, scaled)
    assert sum(got.values()) <= budget * (1 + REL) + REL
    floor = sum(min(c.minimum, c.demand) for c in scaled.values())
    if floor <= budget:
        assert close(sum(got.values()), min(budget, sum(c.demand for c in scaled.values())))
        for k, c in scaled.items():
            assert got[k] >= min(c.minimum, c.demand) * (1 - REL) - REL


rates_st = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 400 * MiB), st.booleans()),
    min_size=1,
    max_size=6,
)


@given(st.integers(10, 100_000), st.integers(10 * MiB, 10_000 * MiB), rates_st)
def test_no_limit_of_either_kind_without_contention(iops_budget, bw_budget, loads):
    """Below 90% of both budgets (or with one busy volume), nobody is limited."""
    total_ops = sum(o for o, _, _ in loads)
    total_bytes = sum(b for _, b, _ in loads)
    busy = sum(1 for o, _, h in loads if o >= 1 or h)
    ns = NodeShare(budget=iops_budget, bandwidth=bw_budget)
    vols = {f"v{i}": ({}, bw_status(0, 0)) for i in range(len(loads))}
    ns.divide(0.0, vols)
    vols = {f"v{i}": ({}, bw_status(o, b, int(h))) for i, (o, b, h) in enumerate(loads)}
    got = ns.divide(1.0, vols)
    if busy < 2 or total_ops < 0.9 * iops_budget:
        assert all(f.iops is None for f in got.values())
    if busy < 2 or total_bytes < 0.9 * bw_budget:
        assert all(f.bandwidth is None for f in got.values())


@given(st.integers(1, 1000), st.integers(1, 1000), st.integers(100 * MiB, 4000 * MiB))
def test_two_volumes_pressing_for_bandwidth_split_it_by_weight(wa, wb, budget):
    ns = NodeShare(budget=10**9, bandwidth=budget)  # IOPS never contended here
    a, b = {"weight": wa}, {"weight": wb}
    ns.divide(0.0, {"a": (a, bw_status(0, 0)), "b": (b, bw_status(0, 0))})
    # both take the whole disk at once, the gate holds both back: shares by their rates
    half = budget // 2
    first = ns.divide(1.0, {"a": (a, bw_status(100, half, 1)), "b": (b, bw_status(100, half, 1))})
    assert first["a"].bandwidth is not None and first["b"].bandwidth is not None
    # next second each did exactly its share and was held again: now by weight
    sa, sb = first["a"].bandwidth, first["b"].bandwidth
    got = ns.divide(
        2.0,
        {"a": (a, bw_status(200, half + sa, 2)), "b": (b, bw_status(200, half + sb, 2))},
    )
    want_a, want_b = budget * wa / (wa + wb), budget * wb / (wa + wb)
    for k, want in (("a", want_a), ("b", want_b)):
        assert abs(got[k].bandwidth - max(MiB, want)) <= max(2.0, want * 1e-6), (got, want)
    assert all(f.iops is None for f in got.values())


def test_bandwidth_minimum_redistribution_and_own_limit():
    ns = NodeShare(budget=10**9, bandwidth=1000 * MiB)
    big, small = {"weight": 1000}, {"weight": 10, "min_iops": 2000}
    k64 = 64 * 1024
    ns.divide(0.0, {"big": (big, bw_status(0, 0)), "small": (small, bw_status(0, 0))})
    # both held back; small does 1000 x 64 KiB a second: it is counted to want 1.5 x that
    # (+ 4 MiB/s), which it gets; big the rest
    got = ns.divide(
        1.0,
        {
            "big": (big, bw_status(4000, 900 * MiB, 1)),
            "small": (small, bw_status(1000, 1000 * k64, 1)),
        },
    )
    assert got["small"].bandwidth == pytest.approx(1.5 * 1000 * k64 + 4 * MiB, abs=1)
    assert got["big"].bandwidth + got["small"].bandwidth == pytest.approx(1000 * MiB, abs=2)
    # small used its share and was held again: it wants more, and its weight's share
    # (1% of the disk) is below its min_iops x its requests = 2000 x 64 KiB = 125 MiB/s
    sb, ss = got["big"].bandwidth, got["small"].bandwidth
    got = ns.divide(
        2.0,
        {
            "big": (big, bw_status(8000, 900 * MiB + sb, 2)),
            "small": (small, bw_status(1000 + ss // k64, 1000 * k64 + ss // k64 * k64, 2)),
        },
    )
    assert got["small"].bandwidth == pytest.approx(125 * MiB, rel=1e-3)
    assert got["big"].bandwidth == pytest.approx(875 * MiB, rel=1e-3)
    # small now does only 10 MiB/s and is not held: big gets everything else
    sb = got["big"].bandwidth
    got = ns.divide(
        3.0,
        {
            "big": (big, bw_status(12000, 900 * MiB + 2 * sb, 3)),
            "small": (small, bw_status(5000, 1000 * k64 + ss // k64 * k64 + 10 * MiB, 2)),
        },
    )
    # (it now does 4 KiB requests: its minimum is 2000 x ~4.3 KiB; its weight's share of
    # the level, 1/101 of the disk, is above that and below its 19 MiB/s demand)
    assert got["small"].bandwidth == pytest.approx(1000 * MiB * 10 / 1010, rel=1e-3)
    assert got["big"].bandwidth + got["small"].bandwidth == pytest.approx(1000 * MiB, abs=2)
    # a volume's own max_bandwidth caps what it is counted to want
    capped = {"weight": 1000, "max_bandwidth": 50 * MiB}
    ns2 = NodeShare(budget=10**9, bandwidth=1000 * MiB)
    ns2.divide(0.0, {"c": (capped, bw_status(0, 0)), "d": ({}, bw_status(0, 0))})
    got = ns2.divide(
        1.0, {"c": (capped, bw_status(100, 50 * MiB, 1)), "d": ({}, bw_status(100, 950 * MiB, 1))}
    )
    assert got["c"].bandwidth == 50 * MiB and got["d"].bandwidth == 950 * MiB
