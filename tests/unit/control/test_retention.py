"""Retention (control/retention.py, pure): examples worked by hand, and properties over
random histories — the newest is never deleted, keep_last N keeps the N newest, each GFS
rule keeps the newest of each of its N most recent buckets, keep_within keeps the window,
a second pass deletes nothing more, and a policy that keeps nothing is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.control.retention import (
    BUCKETS,
    Item,
    Policy,
    check_policy,
    keep,
    newest_first,
    to_delete,
)
from cargohold.errors import InvalidArgument

HOUR, DAY = 3600.0, 86400.0
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC


def items(*times: float) -> list[Item]:
    return [Item(f"s{i}", t) for i, t in enumerate(times)]


def test_keep_last_keeps_the_newest_n() -> None:
    hist = items(*(T0 + i * HOUR for i in range(10)))
    assert keep(hist, Policy(keep_last=3)) == {"s9", "s8", "s7"}
    assert [i.id for i in to_delete(hist, Policy(keep_last=3))] == [f"s{i}" for i in range(7)]


def test_keep_within_is_measured_from_the_newest_not_the_clock() -> None:
    hist = items(T0, T0 + 10 * DAY, T0 + 12 * DAY, T0 + 13 * DAY)
    assert keep(hist, Policy(keep_within=3 * DAY)) == {"s1", "s2", "s3"}
    # a cluster back after a year keeps the same: nothing about "now"
    assert keep(hist, Policy(keep_within=DAY)) == {"s2", "s3"}  # inclusive
    assert keep(hist, Policy(keep_within=DAY / 2)) == {"s3"}


def test_gfs_keeps_the_newest_of_each_bucket() -> None:
    # every 6 hours for 10 days
    hist = items(*(T0 + i * 6 * HOUR for i in range(40)))
    daily = keep(hist, Policy(daily=3))
    # the newest of the last three days: 18:00 of days 9, 8, 7
    assert daily == {"s39", "s35", "s31"}
    weekly = keep(hist, Policy(weekly=2))  # week of 2 Mar (days 0-6) and of 9 Mar (7-9)
    assert weekly == {"s39", "s27"}
    assert keep(hist, Policy(hourly=2)) == {"s39", "s38"}
    assert keep(hist, Policy(monthly=5)) == {"s39"}  # one month only
    both = keep(hist, Policy(keep_last=1, daily=2, weekly=2))
    assert both == {"s39", "s35", "s27"}


def test_empty_history_keeps_nothing_and_empty_policy_is_refused() -> None:
    assert keep([], Policy(keep_last=1)) == set()
    with pytest.raises(InvalidArgument, match="must keep something"):
        keep(items(T0), Policy())
    with pytest.raises(InvalidArgument, match="keep_last must be a count"):
        check_policy(Policy(keep_last=0))
    with pytest.raises(InvalidArgument, match="keep_within must be a positive"):
        check_policy(Policy(keep_within=0))


# --- properties ------------------------------------------------------------------------------

times = st.lists(
    st.floats(min_value=T0, max_value=T0 + 800 * DAY, allow_nan=False), min_size=0, max_size=60
)
counts = st.none() | st.integers(min_value=1, max_value=8)
policies = st.builds(
    Policy,
    keep_last=counts,
    keep_within=st.none() | st.floats(min_value=1.0, max_value=60 * DAY),
    hourly=counts,
    daily=counts,
    weekly=counts,
    monthly=counts,
    yearly=counts,
).filter(lambda p: bool(p.rules()))


@settings(max_examples=300, deadline=None)
@given(times, policies)
def test_properties(ts: list[float], policy: Policy) -> None:
    hist = items(*ts)
    kept = keep(hist, policy)
    ordered = newest_first(hist)
    assert kept <= {i.id for i in hist}
    if hist:
        assert ordered[0].id in kept  # never the newest
    if policy.keep_last:
        assert {i.id for i in ordered[: policy.keep_last]} <= kept
    if policy.keep_within:
        assert {i.id for i in hist if i.created >= ordered[0].created - policy.keep_within} <= kept
    for name, bucket_of in BUCKETS.items():
        n = getattr(policy, name)
        if not n:
            continue
        newest_of: dict[object, str] = {}
        for i in ordered:
            newest_of.setdefault(bucket_of(i.created), i.id)
        recent = list(newest_of.values())[:n]  # buckets in newest-first order
        assert set(recent) <= kept, name
    # idempotent: keeping from what was kept deletes nothing more
    again = keep([i for i in hist if i.id in kept], policy)
    assert again == kept
    # to_delete is the complement, oldest first
    gone = to_delete(hist, policy)
    assert {i.id for i in gone} == {i.id for i in hist} - kept
    assert [i.created for i in gone] == sorted(i.created for i in gone)


@settings(max_examples=100, deadline=None)
@given(times)
def test_a_policy_that_keeps_nothing_is_refused(ts: list[float]) -> None:
    with pytest.raises(InvalidArgument):
        keep(items(*ts), Policy())
