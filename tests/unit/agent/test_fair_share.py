"""The division of a node's IOPS budget by weight (agent/fair_share.py): the properties of
``shares`` under hypothesis, and ``NodeShare`` turning statuses into limits."""

from __future__ import annotations

import math

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
