"""benchmarks/write_path_timeline.py: a write followed through perf's system-call records
(the parser alone; the tool itself needs root, perf and a running engine)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import write_path_timeline as timeline

# perf script -F comm,tid,cpu,time,event,trace: one write, then a write cut off by the end
# of the recording (no fio wake-up: not counted); the engine is 20, its replica server 30
WRITE = """\
             fio    10 [000] 1.000100: raw_syscalls:sys_enter: NR 44 (6, 1, 1c, c000, 0, 0)
             fio    10 [000] 1.000110: raw_syscalls:sys_enter: NR 44 (6, 2, 1000, 4000, 0, 0)
          python    20 [000] 1.000137:  raw_syscalls:sys_exit: NR 281 = 1
          python    20 [000] 1.000140: raw_syscalls:sys_enter: NR 0 (10, 3, 10000, 1, 0, 0)
          python    20 [000] 1.000177: raw_syscalls:sys_enter: NR 20 (d, 4, 2, 1, 0, 0)
          python    30 [001] 1.000209:  raw_syscalls:sys_exit: NR 281 = 1
          python    30 [001] 1.000258: raw_syscalls:sys_enter: NR 18 (f, 5, 1000, 0, 0, 0)
          python    30 [001] 1.000276: raw_syscalls:sys_enter: NR 1 (e, 6, 20, 0, 0, 0)
          python    20 [000] 1.000280:  raw_syscalls:sys_exit: NR 0 = 32
          python    20 [000] 1.000297:  raw_syscalls:sys_exit: NR 281 = 1
          python    20 [000] 1.000338: raw_syscalls:sys_enter: NR 1 (10, 7, 10, 0, 0, 0)
             fio    10 [000] 1.000372:  raw_syscalls:sys_exit: NR 7 = 1
"""
CUT = """\
             fio    10 [000] 1.001000: raw_syscalls:sys_enter: NR 44 (6, 2, 1000, 4000, 0, 0)
          python    20 [000] 1.001030:  raw_syscalls:sys_exit: NR 281 = 1
"""


def test_a_write_is_followed_hop_by_hop() -> None:
    rows = timeline.follow(WRITE + CUT, engine="20", replica="30")
    assert len(rows) == 1
    phases = {what: round(rows[0][b] - rows[0][a]) for a, b, what in timeline.PHASES}
    assert list(phases.values()) == [27, 40, 32, 49, 18, 21, 41, 34]
    assert round(rows[0]["f_wake"] - rows[0]["f_send"]) == 262
