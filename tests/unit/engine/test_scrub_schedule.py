"""When an engine's first periodic scrub is due (cargohold/engine/scrubber.py
``first_delay``) and how the agent tells it (``engine_argv``, ``--last-scrub-at``)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from cargohold.agent.processes import engine_argv
from cargohold.cli.engine_cmd import parser
from cargohold.engine.scrubber import first_delay

WEEK = 7 * 24 * 3600.0
NOW = 1_800_000_000.0


def test_without_a_last_pass_the_interval_counts_from_the_start_less_jitter() -> None:
    rng = random.Random(1)
    delays = [first_delay(WEEK, 0.0, NOW, rng) for _ in range(200)]
    assert all(0.9 * WEEK <= d <= WEEK for d in delays)
    assert len(set(delays)) > 100  # spread, so engines started together do not scrub together


def test_a_recent_pass_defers_the_first_one_to_its_interval() -> None:
    assert first_delay(WEEK, NOW - 3600, NOW) == WEEK - 3600


def test_an_overdue_pass_starts_soon_spread_over_at_most_ten_minutes() -> None:
    rng = random.Random(2)
    delays = [first_delay(WEEK, NOW - 2 * WEEK, NOW, rng) for _ in range(200)]
    assert all(0 <= d <= 600 for d in delays) and max(delays) > 300
    short = [first_delay(60.0, NOW - 120, NOW, rng) for _ in range(50)]
    assert all(0 <= d <= 6.0 for d in short)  # 10 % of a short interval


def test_a_last_pass_in_the_future_waits_no_more_than_one_interval() -> None:
    assert first_delay(WEEK, NOW + 10 * WEEK, NOW) == WEEK  # a clock that jumped


@given(
    every=st.floats(1.0, 10 * WEEK),
    last=st.floats(0.0, 2 * NOW),
)
def test_the_delay_is_never_negative_nor_more_than_an_interval(every: float, last: float) -> None:
    d = first_delay(every, last, NOW, random.Random(0))
    assert 0.0 <= d <= every


def test_the_agent_passes_the_last_scrub_and_the_engine_parses_it() -> None:
    argv = engine_argv("v", 3, ["r0@127.0.0.1:9500"], "r0", "127.0.0.1", 0, "/run/v.sock")
    assert "--last-scrub-at" not in argv  # never scrubbed: from the engine's start
    argv = engine_argv(
        "v", 3, ["r0@127.0.0.1:9500"], "r0", "127.0.0.1", 0, "/run/v.sock", (0, 0), 5012.5
    )
    i = argv.index("--last-scrub-at")
    assert argv[i + 1] == "5012.500"
    a = parser().parse_args(argv[argv.index("engine") + 1 :])
    assert a.last_scrub_at == 5012.5
