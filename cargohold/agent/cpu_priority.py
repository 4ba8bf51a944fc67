"""A volume's weight as its engine's CPU priority (docs/qos.md, "Weights and CPU").

The victim of a noisy neighbour waits less for the disk than for a CPU: on a busy node
its engine's p99 follows how long its process waits to run (docs/benchmarks.md, "QoS:
noisy neighbours"). So the node's agent gives each engine it runs a nice value from its
volume's weight, at the engine's start and again when the weight changes online.

``nice_for`` is the policy (pure): the default weight and above -> nice 0; lower weights
-> higher nice values, so that the scheduler's CPU shares follow the weights the way the
disk budget does (the CFS gives a task ~1.25x the CPU time of one a nice value above it,
so weight w < 100 gets nice round(log(100 / w) / log(1.25)), at most 19: weight 50 -> 3,
25 -> 6, 10 -> 10, 1 -> 19). Never below 0: a negative nice would let a heavy volume's
engine take CPU from the replica servers, which serve every volume, and from the agent.

``renice`` applies one to a process and all its threads (nice is per thread on Linux;
threads started later inherit their creator's). Only the engine: its process tree is its
volume's alone, unlike the replica servers'. Lowering a nice value (a weight raised
online) needs CAP_SYS_NICE; without it the engine keeps its value until its next start.
"""

from __future__ import annotations

import math
import os

from cargohold.qos_limits import DEFAULT_WEIGHT, MAX_WEIGHT, MIN_WEIGHT

MAX_NICE = 19
CFS_STEP = 1.25  # the CPU share ratio of two adjacent nice values (kernel sched_prio_to_weight)


def nice_for(weight: float | None) -> int:
    """The nice value for an engine whose volume has ``weight`` (None: the default)."""
    w = DEFAULT_WEIGHT if weight is None else min(MAX_WEIGHT, max(MIN_WEIGHT, float(weight)))
    if w >= DEFAULT_WEIGHT:
        return 0
    return min(MAX_NICE, round(math.log(DEFAULT_WEIGHT / w) / math.log(CFS_STEP)))


def threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (just ``pid`` when /proc does not list them)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ValueError):
        return [pid]


def renice(pid: int, nice: int) -> int:
    """Set the nice value of ``pid`` and all its threads; -> the main thread's value after.
    OSError (EPERM: lowering it without CAP_SYS_NICE; ESRCH: it is gone) is raised after
    every thread was tried."""
    failed: OSError | None = None
    for tid in threads(pid):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as e:
            failed = e
    if failed is not None:
        raise failed
    return os.getpriority(os.PRIO_PROCESS, pid)
