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

import ctypes
import math
import os
import struct

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


# A short scheduler slice for the data path (docs/qos.md, "Weights and CPU"). Linux 6.12's
# EEVDF scheduler lets a SCHED_OTHER task ask for its own slice (sched_attr.sched_runtime,
# 0.1-100 ms): a task woken with a shorter slice gets an earlier virtual deadline, so it is
# picked (and may preempt the running task) sooner. Engines and replica servers run in
# bursts of tens of µs per request and their wake-up delay is their volume's latency; a
# batch client or a low-weight engine keeps the kernel's default slice (~0.75-3 ms).
SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
SCHED_OTHER = 0
_ATTR = struct.Struct("IIQiIQQQII")  # struct sched_attr (VER1: 56 bytes)
MIN_SLICE_US = 100  # the kernel clamps a custom slice to 0.1-100 ms
MAX_SLICE_US = 100_000


def slice_for(weight: float | None, data_path_slice_us: int) -> int:
    """The slice, in µs, an engine whose volume has ``weight`` asks for (0: the kernel's
    default): ``data_path_slice_us`` at the default weight and above, none below it (a
    low-weight volume should not jump the queue)."""
    w = DEFAULT_WEIGHT if weight is None else float(weight)
    return data_path_slice_us if data_path_slice_us and w >= DEFAULT_WEIGHT else 0


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the kernel's ``/proc/PID/task/TID/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for tid in threads(p):
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
    return out


def set_slice(pid: int, slice_us: int) -> bool:
    """Ask for a ``slice_us`` scheduler slice (0: the default) for ``pid``, all its threads
    and its child processes, keeping each thread's nice value. -> False where the kernel
    cannot (not Linux x86_64/aarch64, or sched_setattr refused). Threads and processes
    started later inherit it."""
    nr = SYS_SCHED_SETATTR.get(os.uname().machine)
    if nr is None:
        return False
    runtime_ns = 0 if slice_us <= 0 else min(MAX_SLICE_US, max(MIN_SLICE_US, slice_us)) * 1000
    libc = ctypes.CDLL(None, use_errno=True)
    ok = True
    for tid in (t for p in tree(pid) for t in threads(p)):
        try:
            nice = os.getpriority(os.PRIO_PROCESS, tid)
        except OSError:
            continue  # a thread that ended meanwhile
        attr = ctypes.create_string_buffer(
            _ATTR.pack(_ATTR.size, SCHED_OTHER, 0, nice, 0, runtime_ns, 0, 0, 0, 0), _ATTR.size
        )
        if libc.syscall(nr, tid, attr, 0) != 0 and ctypes.get_errno() != 3:  # 3: ESRCH
            ok = False
    return ok


def get_slice(tid: int) -> int:
    """The slice ``tid`` asked for, in µs (the kernel's default when it asked for none);
    -1 where it cannot be read."""
    nr = SYS_SCHED_SETATTR.get(os.uname().machine)
    if nr is None:
        return -1
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(nr + 1, tid, buf, _ATTR.size, 0) != 0:  # sched_getattr follows setattr
        return -1
    return int(_ATTR.unpack(buf.raw)[5] // 1000)
