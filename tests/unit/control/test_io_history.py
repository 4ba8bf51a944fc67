"""control/io_history.py: the manager's in-memory ring of each volume's I/O counters and
the rates the console draws from it."""

from __future__ import annotations

import tracemalloc

import pytest

from cargohold.control.io_history import SAMPLES, STALE, IoHistory, Rate, interval, io_counters


def c(r: float, w: float, rb: float, wb: float) -> tuple[float, ...]:
    return (r, w, rb, wb)


def test_rates_are_counter_deltas_over_time() -> None:
    h = IoHistory()
    h.add("v", 100.0, 1, c(0, 0, 0, 0))
    h.add("v", 102.0, 1, c(200, 100, 200 * 4096, 100 * 65536))
    h.add("v", 103.0, 1, c(200, 150, 200 * 4096, 150 * 65536))
    assert h.rates("v") == [
        Rate(102.0, 100.0, 50.0, 100 * 4096.0, 50 * 65536.0),
        Rate(103.0, 0.0, 50.0, 0.0, 50 * 65536.0),
    ]


def test_a_counter_reset_on_an_engine_restart_is_a_gap_not_a_negative_rate() -> None:
    h = IoHistory()
    h.add("v", 0.0, 1, c(1000, 1000, 10**6, 10**6))
    h.add("v", 1.0, 1, c(5, 3, 5 * 4096, 3 * 4096))  # restarted in place: counters from 0
    h.add("v", 2.0, 1, c(15, 3, 15 * 4096, 3 * 4096))
    rates = h.rates("v")
    assert rates[0] is None
    assert rates[1] == Rate(2.0, 10.0, 0.0, 10 * 4096.0, 0.0)
    assert all(x >= 0 for r in rates if r for x in (r.read_iops, r.write_iops))


def test_a_new_epoch_a_detach_a_silence_or_a_clock_step_back_are_gaps() -> None:
    h = IoHistory(gap=30.0)
    h.add("v", 0.0, 1, c(0, 0, 0, 0))
    h.add("v", 1.0, 2, c(10, 10, 10, 10))  # a new engine (attached elsewhere)
    h.add("v", 2.0, 2, c(20, 20, 20, 20))
    h.gap("v", 3.0)  # detached
    h.gap("v", 3.5)  # (one gap is enough)
    h.add("v", 4.0, 2, c(30, 30, 30, 30))
    h.add("v", 100.0, 2, c(40, 40, 40, 40))  # 96 s without a report
    h.add("v", 99.0, 2, c(50, 50, 50, 50))  # the manager's clock stepped back
    rates = h.rates("v")
    assert rates == [None, Rate(2.0, 10.0, 10.0, 10.0, 10.0), None, None, None, None]
    assert h.rates("unknown") == []
    h.add("v", 101.0, 2, c(60, 60, 60, 60))
    assert h.rates("v", now=110.0)[-1] == Rate(101.0, 5.0, 5.0, 5.0, 5.0)
    assert h.rates("v", now=140.0)[-1] is None  # no report for 39 s: nothing "now"


def test_the_ring_keeps_the_last_samples_only() -> None:
    h = IoHistory(size=5)
    for i in range(12):
        h.add("v", float(i), 1, c(i * 10, 0, 0, 0))
    rates = h.rates("v")
    assert len(rates) == 4
    assert [r.at for r in rates if r] == [8.0, 9.0, 10.0, 11.0]
    assert {r.read_iops for r in rates if r} == {10.0}
    h.forget("v")
    assert h.rates("v") == []


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"io": "x"},
        {"io": {"read": 1, "write": 2, "read_bytes": 3}},
        {"io": {"read": 1, "write": 2, "read_bytes": 3, "written_bytes": -4}},
        {"io": {"read": True, "write": 2, "read_bytes": 3, "written_bytes": 4}},
        {"io": {"read": "1", "write": 2, "read_bytes": 3, "written_bytes": 4}},
        {"io": {"read": float("nan"), "write": 2, "read_bytes": 3, "written_bytes": 4}},
    ],
)
def test_malformed_counters_are_not_taken(status: dict[str, object]) -> None:
    assert io_counters(status) is None


def test_well_formed_counters_are_taken() -> None:
    io = {"read": 1, "write": 2, "read_bytes": 3, "written_bytes": 4, "other": 9}
    assert io_counters({"io": io}) == (1.0, 2.0, 3.0, 4.0)


def test_interval_is_never_negative() -> None:
    assert interval((0.0, 1.0, 5, 5, 5, 5), (1.0, 1.0, 5, 4, 5, 5)) is None
    assert interval((1.0, 1.0, 5, 5, 5, 5), (1.0, 1.0, 6, 6, 6, 6)) is None  # no time


def test_memory_for_2000_volumes_is_bounded() -> None:
    """Full rings: ~3 KB a volume, ~6 MB for 2,000 (docs/ui.md gives the figure); 50
    measured (tracemalloc is slow), the bound is per volume."""
    n = 50
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        h = IoHistory()
        for v in range(n):
            for i in range(SAMPLES + 5):
                h.add(f"pvc-{v:04d}", float(i), 1, c(i, i, i * 4096, i * 4096))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(h.rates("pvc-0000")) == SAMPLES - 1
    print(f"io history: {used / n:.0f} bytes a volume, {used / n * 2000 / 1e6:.1f} MB for 2000")
    assert used / n < 4000


def test_rings_of_volumes_not_heard_of_for_ten_minutes_are_dropped():
    h = IoHistory()
    h.add("gone", 1000.0, 1, (0, 0, 0, 0))
    h.add("kept", 1500.0, 1, (0, 0, 0, 0))
    h.add("new", 1000.0 + STALE + 1, 1, (0, 0, 0, 0))  # a new ring sweeps the stale ones
    assert sorted(h.rings) == ["kept", "new"]
