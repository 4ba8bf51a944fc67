"""The agent's re-adds of a replica its engine dropped (issue #14 item 6): a replica that
keeps failing — on a full disk it fails again in every rebuild — is re-added with
exponential back-off (5 s doubling to 5 min) instead of every 5 s for ever; once it is RW
again, the next drop starts over at 5 s."""

from __future__ import annotations

import itertools

from cargohold.agent import engine_process
from cargohold.agent.engine_process import READD_MAX, EngineProcess, readd_wait
from cargohold.control.model import EngineAssignment

EVERY = 5.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def engine(monkeypatch, clock: Clock) -> EngineProcess:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(engine_process.time, "monotonic", clock)
    spec = EngineAssignment(
        volume="v", epoch=1, size_bytes=1 << 20, replicas=["v-r1@h:1", "v-r2@h:2"]
    )
    return EngineProcess(spec, "127.0.0.1", "/nonexistent.sock", "/dev/null")


def status(mode2: str) -> dict:  # type: ignore[type-arg]
    err = "NoSpace: write at 0: no space left on disk /d of node n" if mode2 == "ERR" else ""
    return {
        "replicas": [
            {"id": "v-r1", "mode": "RW"},
            {"id": "v-r2", "mode": mode2, "error": err},
        ]
    }


def readd_times(
    eng: EngineProcess, clock: Clock, seconds: float, taken: bool = True
) -> list[float]:
    """Step the clock by 1 s; whenever the plan re-adds v-r2, the attempt fails again (the
    rebuild hits the full disk: ERR). -> when the re-adds happened (from the start)."""
    start, out = clock.t, []
    while clock.t - start < seconds:
        eng.status = status("ERR")
        for what, arg in eng.replica_plan(EVERY):
            assert (what, arg) == ("add", "v-r2@h:2")
            eng.tried["v-r2"] = clock.t  # what Engines._change_replicas records
            if taken:
                eng.readded("v-r2")  # the engine took it back (then it failed again)
            out.append(clock.t - start)
        clock.t += 1.0
    return out


def test_waits_double_up_to_five_minutes() -> None:
    assert [readd_wait(n, EVERY) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert readd_wait(10_000, EVERY) == READD_MAX


def test_a_replica_that_keeps_failing_is_re_added_with_back_off(monkeypatch) -> None:
    clock = Clock()
    eng = engine(monkeypatch, clock)
    times = readd_times(eng, clock, 1200)
    # before: every 5 s, 240 attempts in 20 minutes; now 5, 10, 20, 40, 80, 160, 300, 300...
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [10, 20, 40, 80, 160, 300], times
    assert all(g == 300 for g in gaps[5:])
    assert len(times) <= 10


def test_back_off_starts_over_once_the_replica_is_current(monkeypatch) -> None:
    clock = Clock()
    eng = engine(monkeypatch, clock)
    readd_times(eng, clock, 200)
    assert eng.readds["v-r2"] >= 4
    eng.status = status("RW")  # space came back: rebuilt, RW
    assert eng.replica_plan(EVERY) == []
    assert "v-r2" not in eng.readds
    clock.t += 3600
    times = readd_times(eng, clock, 20)
    assert times[:2] == [0.0, 10.0]  # dropped again: 5 s after the last try, then 10 s


def test_an_unreachable_replica_is_tried_every_5_s(monkeypatch) -> None:
    """A re-add the engine refuses (the replica's node is down or cut off: OPEN fails) does
    not count: the replica comes back within 5 s of its node."""
    clock = Clock()
    eng = engine(monkeypatch, clock)
    times = readd_times(eng, clock, 60, taken=False)
    assert [b - a for a, b in itertools.pairwise(times)] == [5.0] * (len(times) - 1)
    assert len(times) == 12


def test_the_manager_gets_four_io_totals_not_the_histograms() -> None:
    """The heartbeat stays small: of the engine's counters only the I/O totals the console
    draws (control/io_history.py); they moving makes a busy engine's status 'changed'."""
    status = {
        "generation": 3,
        "counters": {"read": 7, "write": 2, "read_bytes": 7 * 4096, "rebuilds": 1},
        "latency_log2_us": {"read": {"10": 7}},
        "inflight": 1,
    }
    out = engine_process._reported(status)
    assert out == {
        "generation": 3,
        "io": {"read": 7, "write": 2, "read_bytes": 7 * 4096, "written_bytes": 0},
    }
    busier = dict(status, counters={**status["counters"], "read": 8})  # type: ignore[dict-item]
    assert engine_process._reported(busier) != out
    assert "io" not in engine_process._reported({"generation": 3})
