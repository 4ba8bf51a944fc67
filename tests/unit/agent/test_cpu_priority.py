"""A volume's weight as its engine's nice value (agent/cpu_priority.py): the policy under
hypothesis, and ``renice`` on a real child process with threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.agent.cpu_priority import MAX_NICE, nice_for, renice, threads
from cargohold.qos_limits import DEFAULT_WEIGHT, MAX_WEIGHT, MIN_WEIGHT

weights = st.integers(MIN_WEIGHT, MAX_WEIGHT)


def test_the_default_weight_is_nice_0_and_the_lowest_is_19() -> None:
    assert nice_for(None) == nice_for(DEFAULT_WEIGHT) == 0
    assert nice_for(MIN_WEIGHT) == MAX_NICE
    assert [nice_for(w) for w in (50, 25, 10)] == [3, 6, 10]  # as docs/qos.md says


@given(weights, weights)
def test_monotone_a_lower_weight_never_gets_a_lower_nice(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert nice_for(lo) >= nice_for(hi)


@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_always_within_0_and_19_and_never_negative(w: float) -> None:
    n = nice_for(w)
    assert 0 <= n <= MAX_NICE
    if w >= DEFAULT_WEIGHT:
        assert n == 0


def test_renice_reaches_every_thread_of_the_process() -> None:
    code = (
        "import threading, time\n"
        "[threading.Thread(target=time.sleep, args=(30,), daemon=True).start() for _ in range(3)]\n"
        "print('up', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"up"
        tids = threads(p.pid)
        assert len(tids) >= 4
        assert renice(p.pid, 7) == 7
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in threads(p.pid)} == {7}
    finally:
        p.kill()
        p.wait()


def test_renice_of_a_process_that_is_gone_raises() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(ProcessLookupError):
        renice(p.pid, 5)
