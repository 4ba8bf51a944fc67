"""Schedules (control/schedule.py, pure): cron slots, the deterministic per-(job, volume)
jitter within its bound, and missed slots caught up once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.control.schedule import (
    check_cron,
    jitter,
    jitter_bound,
    next_slot,
    plan,
    prev_slot,
)
from cargohold.errors import InvalidArgument

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()
HOURLY = "0 * * * *"


def test_bad_cron_is_refused_with_an_example() -> None:
    for bad in ("", "* * * *", "61 * * * *", "every hour", "* * * * * *", "0 25 * * *"):
        with pytest.raises(InvalidArgument, match="five fields"):
            check_cron(bad)
    assert check_cron("*/5 * * * 1-5") == "*/5 * * * 1-5"


def test_slots() -> None:
    assert next_slot(HOURLY, T0) == T0 + 3600
    assert next_slot(HOURLY, T0 - 1) == T0
    assert prev_slot(HOURLY, T0) == T0  # a slot is its own previous
    assert prev_slot(HOURLY, T0 + 3599) == T0
    assert next_slot("30 2 * * *", T0) == T0 + 2 * 3600 + 1800  # 02:30 UTC


def test_jitter_is_deterministic_and_bounded() -> None:
    a = jitter("hourly", "data", 60)
    assert a == jitter("hourly", "data", 60)
    assert 0 <= a < 60
    spread = {round(jitter("hourly", f"v{i}", 60)) for i in range(100)}
    assert len(spread) > 20  # volumes do not all start together
    assert jitter("hourly", "data", 0) == 0.0
    # at most a quarter of the period: an every-minute job waits at most 15 s
    assert jitter_bound("* * * * *", 60, T0) == 15
    assert jitter_bound(HOURLY, 60, T0) == 60


def test_due_once_for_many_missed_slots() -> None:
    # last ran for T0; the manager was down for 5 hours and 10 minutes
    p = plan(HOURLY, T0, T0 + 5 * 3600 + 600)
    assert p.due and p.slot == T0 + 5 * 3600 and p.missed == 4
    assert p.next_due == T0 + 6 * 3600
    # having run for that slot, nothing is due until the next one
    q = plan(HOURLY, p.slot, T0 + 5 * 3600 + 700)
    assert not q.due and q.next_due == T0 + 6 * 3600


def test_jitter_delays_the_due_time() -> None:
    assert not plan(HOURLY, T0, T0 + 3600 + 10, offset=30).due
    p = plan(HOURLY, T0, T0 + 3600 + 30, offset=30)
    assert p.due and p.slot == T0 + 3600 and p.next_due == T0 + 7200 + 30


def test_a_new_job_waits_for_its_first_slot() -> None:
    created = T0 + 1200
    p = plan(HOURLY, created, created + 60)
    assert not p.due and p.next_due == T0 + 3600


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([HOURLY, "*/5 * * * *", "30 2 * * *", "0 0 * * 0"]),
    st.floats(min_value=0, max_value=40 * 86400),
    st.floats(min_value=0, max_value=40 * 86400),
)
def test_plan_properties(expr: str, since: float, later: float) -> None:
    last = T0 + since
    now = last + later
    p = plan(expr, last, now)
    if p.due:
        assert p.slot is not None and last < p.slot <= now
        assert next_slot(expr, p.slot) > now  # the newest slot: one run for all missed
        assert not plan(expr, p.slot, now).due  # and then nothing more at the same time
    else:
        assert next_slot(expr, last) > now
    assert p.next_due > now
