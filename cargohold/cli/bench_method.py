"""The measuring method of every benchmark (issue #22 Part 1: baselines you can trust): one
place for each fact, used by ``cargohold bench`` (cli/bench_cmd.py) and by the benchmarks in
``benchmarks/`` (benchmarks/method.py re-exports it; benchmarks/ is not a shipped package).

Pure functions (tested in tests/unit/test_bench_method.py) and the few reads of /proc they
need:

- ``parse_stat`` / ``cpu_ticks`` / ``cpu_us_per_op``: CPU time of a set of processes (all
  their threads, utime + stime from ``/proc/PID/stat``) before and after a run, divided by
  the operations done: robust on a shared machine where wall-clock throughput is not.
- ``spread``: median, min, max and the spread (max - min) / median of repeated runs.
- ``band_check``: is a baseline (nbdkit's file plugin, the local file) in its usual band:
  its repeated runs within ±``tolerance`` of their median, and nbdkit consistent with the
  local file of the same run. A run whose baseline is out of band is INVALID, not a result.
- ``settle_writeback``: ``sync`` and wait until ``/proc/meminfo``'s Dirty + Writeback is
  near 0, so no run pays for the dirty pages of the run (or the fill) before it.
- ``CEPH_ANCHOR``: Ceph RBD's recorded figure on this machine kind (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Rook-Ceph RBD, 3 replicas, 4 KiB random write at QD16, on this machine kind (the brief)
CEPH_ANCHOR: dict[str, Any] = {"workload": "randwrite-4k-qd16", "replicas": 3, "iops": 1380.0}

# nbdkit's file plugin in its usual band relative to the local file (O_DIRECT libaio) in the
# same run, 4 KiB random write QD16: 47k vs 53k on a quiet machine (the brief), up to 125k
# when the file is in the page cache; a stalled nbdkit (issue #22: 21.9k) falls below
NBDKIT_VS_LOCAL_MIN = 0.5
BAND_TOLERANCE = 0.15  # repeated runs of a baseline within ±15 % of their median

try:
    CLK_TCK = os.sysconf("SC_CLK_TCK")
except (ValueError, OSError):  # pragma: no cover - Linux has it
    CLK_TCK = 100


# --- CPU accounting ---------------------------------------------------------------------------
def parse_stat(text: str) -> tuple[int, int, int]:
    """``/proc/PID/stat`` -> (pid, ppid, utime + stime in clock ticks). The command name
    (field 2) may hold spaces and parentheses: fields are counted after its last ')'."""
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError(f"not a /proc/PID/stat line: {text[:60]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()  # fields[0] is the state (field 3)
    if len(fields) < 13:
        raise ValueError(f"/proc/{pid}/stat has {len(fields) + 2} fields, expected 15 or more")
    return pid, int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(stats: dict[int, tuple[int, int]], roots: Iterable[int]) -> set[int]:
    """``roots`` and their live descendants. ``stats``: pid -> (ppid, ticks)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    todo, seen = list(roots), set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += children.get(p, [])
    return seen


def tree_ticks(stats: dict[int, tuple[int, int]], roots: Iterable[int]) -> int:
    """CPU ticks of ``roots`` and their live descendants. ``stats``: pid -> (ppid, ticks)."""
    return sum(stats.get(p, (0, 0))[1] for p in descendants(stats, roots))


def read_stats() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime ticks) of every process on the machine."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                pid, ppid, ticks = parse_stat(f.read())
        except (OSError, ValueError):
            continue  # gone meanwhile
        out[pid] = (ppid, ticks)
    return out


def cpu_ticks(pids: Sequence[int]) -> dict[int, int]:
    """CPU ticks of each of ``pids`` (with its descendants) now."""
    stats = read_stats()
    return {p: tree_ticks(stats, [p]) for p in pids}


def run_queue_wait_ns(pids: Sequence[int]) -> dict[int, int]:
    """Nanoseconds each of ``pids`` (all its threads, and its descendants) has spent
    runnable but waiting for a CPU (``/proc/PID/task/TID/schedstat``, second field): on a
    shared machine, how much of a latency is the scheduler's rather than the process's."""
    stats = read_stats()
    return {root: sum(_schedstat_wait(p) for p in descendants(stats, [root])) for root in pids}


def _schedstat_wait(pid: int) -> int:
    """Nanoseconds the threads of ``pid`` have waited for a CPU (0 for a process gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    total = 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_us_per_op(before: dict[int, int], after: dict[int, int], ops: float) -> float:
    """Microseconds of CPU per operation, summed over every process of ``before``."""
    if ops <= 0:
        return 0.0
    ticks = sum(max(0, after.get(p, 0) - t) for p, t in before.items())
    return ticks / CLK_TCK * 1e6 / ops


# --- repeated runs ----------------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the relative spread (max - min) / median of repeated runs."""
    if not values:
        raise ValueError("no values")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread": (hi - lo) / med if med else 0.0,
        "n": len(values),
    }


@dataclass
class BandVerdict:
    valid: bool
    reasons: list[str] = field(default_factory=list)


def band_check(
    runs: Mapping[str, Sequence[float]],
    tolerance: float = BAND_TOLERANCE,
    nbdkit_vs_local_min: float = NBDKIT_VS_LOCAL_MIN,
) -> BandVerdict:
    """Are the baselines of one workload in band? ``runs``: system -> its repeated figures
    (IOPS or MB/s), with ``nbdkit`` and ``local`` where they were measured. Out of band:
    a baseline's run more than ``tolerance`` away from its median, or nbdkit's median below
    ``nbdkit_vs_local_min`` x the local file's (a stalled nbdkit makes every ratio to it a
    flattering lie)."""
    reasons = []
    for key in ("local", "nbdkit"):
        vals = runs.get(key)
        if not vals:
            continue
        med = statistics.median(vals)
        if med <= 0:
            reasons.append(f"{key}: median {med:g}")
            continue
        worst = max(vals, key=lambda v: abs(v - med))
        if abs(worst - med) > tolerance * med:
            reasons.append(
                f"{key}: a run at {worst:,.0f} is {100 * (worst - med) / med:+.0f}% from "
                f"the median {med:,.0f} (band ±{100 * tolerance:.0f}%)"
            )
    if runs.get("local") and runs.get("nbdkit"):
        loc, nbd = statistics.median(runs["local"]), statistics.median(runs["nbdkit"])
        if loc > 0 and nbd < nbdkit_vs_local_min * loc:
            reasons.append(
                f"nbdkit's median {nbd:,.0f} is {nbd / loc:.2f}x the local file's {loc:,.0f} "
                f"(expected ≥ {nbdkit_vs_local_min:.2f}x): the baseline stalled"
            )
    return BandVerdict(not reasons, reasons)


# --- the host -------------------------------------------------------------------------------
def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> {name: KiB}."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name.strip()] = int(parts[0])
    return out


def dirty_kib() -> int:
    """Dirty + Writeback pages of the machine, KiB."""
    with open("/proc/meminfo") as f:
        m = parse_meminfo(f.read())
    return m.get("Dirty", 0) + m.get("Writeback", 0)


def settle_writeback(limit_kib: int = 32 * 1024, timeout: float = 10.0) -> dict[str, float]:
    """``sync``, then wait (bounded: on a shared machine others keep writing) until Dirty +
    Writeback is under ``limit_kib``; -> what it found: dirty KiB before and after and the
    seconds it took (recorded with the run)."""
    t0 = time.monotonic()
    before = dirty_kib()
    os.sync()
    now = dirty_kib()
    while now > limit_kib and time.monotonic() - t0 < timeout:
        time.sleep(0.2)  # other engineers' writeback: sync again, bounded
        os.sync()
        now = dirty_kib()
    return {"dirty_kib_before": before, "dirty_kib_after": now, "s": time.monotonic() - t0}


def host_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def save_json(path: str, out: Mapping[str, Any]) -> None:
    """A run's results to ``path`` (JSON), its directory made when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
