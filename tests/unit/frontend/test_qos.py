"""The token buckets of per-volume QoS (frontend/qos.py) and the limits' one check
(cargohold/qos_limits.py): rates hold exactly over any pattern of requests, the cost model
charges large requests, bursts are bounded, and bad limits are named with their allowed
values. Pure: the clock is a number the test moves."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold import qos_limits
from cargohold.errors import InvalidArgument
from cargohold.frontend.qos import (
    FREE,
    MIN_BURST_SECONDS,
    OTHER_WRITE,
    READ,
    WRITE,
    Limiter,
    TokenBucket,
    kind_of,
    ops_for,
)
from cargohold.protocol import nbd

KIB = 1024


def run(lim: Limiter, kind: int, nbytes: int, seconds: float, start: float = 0.0) -> int:
    """A client that always has a request ready: how many go in ``seconds``."""
    now, n = start, 0
    while True:
        w = lim.wait(kind, now)
        if w > 0:
            now += w
        if now > start + seconds:
            return n
        lim.take(kind, nbytes)
        n += 1


def test_the_cost_model_counts_one_op_per_started_256k() -> None:
    assert [ops_for(n) for n in (0, 512, 4 * KIB, 256 * KIB, 256 * KIB + 1, 1024 * KIB)] == [
        1,
        1,
        1,
        1,
        2,
        4,
    ]
    assert kind_of(nbd.CMD_READ) == READ and kind_of(nbd.CMD_WRITE) == WRITE
    assert kind_of(nbd.CMD_TRIM) == kind_of(nbd.CMD_WRITE_ZEROES) == OTHER_WRITE
    assert kind_of(nbd.CMD_FLUSH) == kind_of(nbd.CMD_BLOCK_STATUS) == FREE


@pytest.mark.parametrize("nbytes", [4 * KIB, 1024 * KIB])
def test_an_iops_limit_holds_for_small_and_large_requests(nbytes: int) -> None:
    lim = Limiter({"max_iops": 1000}, 0.0)
    n = run(lim, READ, nbytes, 20.0)
    ops = n * ops_for(nbytes)
    assert 20_000 <= ops <= 20_000 + 1000 * MIN_BURST_SECONDS + ops_for(nbytes)


def test_a_bandwidth_limit_holds_and_a_request_larger_than_the_bucket_still_goes() -> None:
    lim = Limiter({"max_write_bandwidth": 1 << 20}, 0.0)  # 1 MiB/s: the bucket holds 10 KiB
    n = run(lim, WRITE, 4 << 20, 20.0)  # 4 MiB requests
    assert n * 4 == pytest.approx(20, abs=4)  # one per 4 s, plus the first


def test_reads_do_not_draw_on_write_limits_and_the_total_caps_both() -> None:
    lim = Limiter({"max_write_iops": 100, "max_iops": 1000}, 0.0)
    assert run(lim, READ, 4096, 1.0) == pytest.approx(1000, abs=12)
    lim = Limiter({"max_write_iops": 100}, 0.0)
    for _ in range(10_000):  # reads are not limited at all
        assert lim.wait(READ, 0.0) == 0
        lim.take(READ, 4096)
    assert run(lim, WRITE, 4096, 10.0, start=0.0) == pytest.approx(1000, abs=3)


def test_trim_and_zeroes_cost_one_write_op_and_no_bytes_flush_costs_nothing() -> None:
    lim = Limiter({"max_write_bandwidth": 1 << 20, "max_write_iops": 10}, 0.0)
    lim.take(OTHER_WRITE, 1 << 30)  # a 1 GiB trim
    assert lim.wait(OTHER_WRITE, 0.0) == pytest.approx(1 / 10 - MIN_BURST_SECONDS, rel=1e-6)
    assert lim.wait(FREE, 0.0) == 0


def test_a_burst_lets_an_idle_volume_run_ahead_by_that_much_only() -> None:
    lim = Limiter({"max_iops": 100, "burst_seconds": 2.0}, 0.0)
    first = run(lim, READ, 4096, 0.0)  # at once: the full bucket
    assert first == 201  # 200 tokens held, the 201st goes into debt
    assert lim.wait(READ, 0.0) == pytest.approx(0.01)
    # after 10 s idle the bucket is full again, not 1000 tokens deep
    assert run(lim, READ, 4096, 0.0, start=10.0) == 201


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(10, 100_000),
    sizes=st.lists(st.integers(1, 4 << 20), min_size=1, max_size=50),
    gaps=st.lists(st.floats(0, 0.05), min_size=1, max_size=50),
)
def test_no_pattern_of_requests_beats_the_rate(
    rate: int, sizes: list[int], gaps: list[float]
) -> None:
    """Whatever the sizes and the pauses, the ops taken in [0, T] never exceed the bucket
    plus rate x T plus one request's cost (the one that went into debt)."""
    lim = Limiter({"max_iops": rate}, 0.0)
    now, taken, biggest = 0.0, 0, 0
    for i in range(200):
        size = sizes[i % len(sizes)]
        now += gaps[i % len(gaps)]
        w = lim.wait(READ, now)
        assert w >= 0
        now += w
        assert lim.wait(READ, now) == 0
        lim.take(READ, size)
        taken += ops_for(size)
        biggest = max(biggest, ops_for(size))
        assert taken <= rate * MIN_BURST_SECONDS + rate * now + biggest + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(1, 1e6), capacity=st.floats(0, 1e6), steps=st.lists(st.floats(0, 10)))
def test_a_bucket_never_holds_more_than_its_capacity(
    rate: float, capacity: float, steps: list[float]
) -> None:
    b = TokenBucket(rate, capacity, 0.0)
    now = 0.0
    for s in steps:
        now += s
        b.refill(now)
        assert b.tokens <= capacity + 1e-9
        b.take(s)
    assert b.wait(now) >= 0 and math.isfinite(b.wait(now))


# --- the limits' check -------------------------------------------------------------------
def test_check_keeps_the_set_limits_and_drops_unset_ones() -> None:
    assert qos_limits.check({"max_iops": 1000, "max_bandwidth": None}) == {"max_iops": 1000}
    assert qos_limits.check({"burst_seconds": 1}) == {"burst_seconds": 1.0}
    assert qos_limits.check({"max_iops": 1000.0}) == {"max_iops": 1000}


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        ({"max_iops": 5}, ["max_iops=5", "from 10 to 10000000"]),
        ({"max_iops": True}, ["max_iops=True"]),
        ({"max_iops": "1000"}, ["max_iops='1000'"]),
        ({"max_iops": 10.5}, ["max_iops=10.5"]),
        ({"max_bandwidth": 1000}, ["max_bandwidth=1000", "bytes per second"]),
        ({"burst_seconds": 61}, ["burst_seconds=61", "from 0 to 60"]),
        ({"burst_seconds": math.nan}, ["burst_seconds=nan"]),
        ({"iops": 10}, ["unknown qos limit 'iops'", "max_iops"]),
    ],
)
def test_a_bad_limit_is_named_with_its_allowed_values(limits: dict, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as e:
        qos_limits.check(limits)
    for w in words:
        assert w in str(e.value)


def test_merge_changes_adds_and_removes() -> None:
    cur = {"max_iops": 1000, "max_bandwidth": 1 << 30}
    assert qos_limits.merge(cur, {"max_iops": 2000, "max_bandwidth": None}) == {"max_iops": 2000}
    assert qos_limits.merge(cur, {"max_iops": 0}) == {"max_bandwidth": 1 << 30}
    with pytest.raises(InvalidArgument, match="unknown qos limit"):
        qos_limits.merge(cur, {"nope": 1})


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("max_iops", "10k", 10_000),
        ("max_iops", "2500", 2500),
        ("max_bandwidth", "100Mi", 100 << 20),
        ("max_bandwidth", "100MiB/s", 100 << 20),
        ("max_bandwidth", "200M", 200_000_000),
        ("max_bandwidth", "1.5Gi", 3 << 29),
        ("burst_seconds", "2s", 2.0),
        ("burst_seconds", "0.5", 0.5),
        ("max_iops", "none", None),
        ("max_iops", "0", None),
    ],
)
def test_parse_text_reads_the_cli_and_csi_forms(name: str, text: str, value: object) -> None:
    assert qos_limits.parse_text(name, text) == value


@pytest.mark.parametrize("text", ["ten", "10x", "-5", "1e3"])
def test_parse_text_names_the_parameter_in_its_error(text: str) -> None:
    with pytest.raises(InvalidArgument, match="max_iops="):
        qos_limits.parse_text("max_iops", text)
