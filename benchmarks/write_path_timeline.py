#!/usr/bin/env python3
"""Benchmark: where one QD1 write's time goes, hop by hop (engine, 1 replica).

Runs ``benchmarks/engine.py --systems engine-1 --workloads randwrite-4k-qd1`` as a child;
while fio writes, ``perf record`` takes the system calls (``raw_syscalls``) and the
scheduler's switches and wake-ups of fio, the engine and its replica server (found in the
child's process tree, never by name) for ``--record`` seconds. Each write is then followed
through the system calls that carry it — fio's ``sendto`` of the 4 KiB payload, the
engine's ``epoll_pwait`` wake-up and ``writev`` to the replica, the replica server's wake-up,
``pwrite64`` and reply ``write``, the engine's wake-up and its ``write`` of the NBD reply,
fio's ``poll`` wake-up — and the time between each pair is reported (p50, p90, p99 in µs),
with the mean of each phase over the slowest 1 % of writes (what makes the tail). A
"wake" phase is the time from one process's send to the next one's return from its wait:
the kernel's delivery plus the scheduler's wake-up (plus any wait for a CPU); the others
are one process's work (its system calls and its Python). perf's tracing adds a few µs
per system call: compare phases with each other and runs with runs, not with fio's figures.

    .venv/bin/python benchmarks/write_path_timeline.py [--record 2] [--local-link unix]

Needs root (perf) and the tools engine.py needs. Every process is the child's: it stops
them itself when its run ends.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from cargohold.cli.bench_method import descendants, read_stats

HERE = os.path.dirname(os.path.abspath(__file__))

NR_WRITE, NR_POLL, NR_PWRITE64, NR_WRITEV, NR_SENDTO, NR_EPOLL_PWAIT = 1, 7, 18, 20, 44, 281
PHASES = [  # (from, to, what)
    ("f_send", "e_wake1", "fio send -> engine wakes"),
    ("e_wake1", "e_writev", "engine: wake -> writev to replica (read, Python)"),
    ("e_writev", "r_wake", "engine writev -> replica server wakes"),
    ("r_wake", "r_pwrite", "replica server: wake -> pwrite (read, Python)"),
    ("r_pwrite", "r_write", "replica server: pwrite -> reply write"),
    ("r_write", "e_wake2", "replica reply -> engine wakes"),
    ("e_wake2", "e_write", "engine: wake -> reply to fio (read, Python)"),
    ("e_write", "f_wake", "engine reply -> fio wakes"),
]
_LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s+(.*)")


def tree(root: int) -> dict[int, str]:
    """pid -> command line of ``root``'s descendants."""
    out: dict[int, str] = {}
    for pid in sorted(descendants(read_stats(), [root]) - {root}):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            out[pid] = ""
    return out


def follow(text: str, engine: str, replica: str) -> list[dict[str, float]]:
    """Each write's timestamps (µs), in the order perf recorded them."""
    rows: list[dict[str, float]] = []
    cur: dict[str, float] | None = None
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        comm, tid, ts, name, rest = m.groups()
        t = float(ts) * 1e6
        if name.endswith("sys_enter"):
            nr = int(rest.split()[1])
            if comm == "fio" and nr == NR_SENDTO and " 1000," in rest:  # the 4 KiB payload
                cur = {"f_send": t}
            elif cur is None:
                continue
            elif tid == engine and nr == NR_WRITEV:
                cur["e_writev"] = t
            elif tid == replica and nr == NR_PWRITE64:
                cur["r_pwrite"] = t
            elif tid == replica and nr == NR_WRITE:
                cur["r_write"] = t
            elif tid == engine and nr == NR_WRITE and "e_writev" in cur:
                cur["e_write"] = t
        elif name.endswith("sys_exit") and cur is not None:
            nr = int(rest.split()[1])
            if tid == engine and nr == NR_EPOLL_PWAIT:
                if "e_writev" not in cur:
                    cur.setdefault("e_wake1", t)
                elif "r_write" in cur:
                    cur.setdefault("e_wake2", t)
            elif tid == replica and nr == NR_EPOLL_PWAIT and "e_writev" in cur:
                cur.setdefault("r_wake", t)
            elif comm == "fio" and nr == NR_POLL and "e_write" in cur:
                cur["f_wake"] = t
                rows.append(cur)
                cur = None
    return [r for r in rows if all(a in r and b in r for a, b, _ in PHASES)]


def report(rows: list[dict[str, float]]) -> None:
    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    print(f"{len(rows)} writes followed")
    print(f"{'phase':52} {'p50':>8} {'p90':>8} {'p99':>8}   slowest 1 %: mean")
    slow = sorted(rows, key=lambda r: r["f_wake"] - r["f_send"])[-max(1, len(rows) // 100) :]
    for a, b, what in [*PHASES, ("f_send", "f_wake", "the whole write (fio send -> fio wakes)")]:
        xs = sorted(r[b] - r[a] for r in rows)
        tail = sum(r[b] - r[a] for r in slow) / len(slow)
        print(f"{what:52} {q(xs, 0.5):8.1f} {q(xs, 0.9):8.1f} {q(xs, 0.99):8.1f}   {tail:10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", type=float, default=2.0, help="seconds of perf record (2)")
    ap.add_argument("--seconds", type=float, default=12, help="engine.py's run (12)")
    ap.add_argument("--local-link", choices=["unix", "tcp"], default="unix")
    ap.add_argument("--size", default="256MiB")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="qd1-timeline-")
    cmd = [sys.executable, os.path.join(HERE, "engine.py"), "--systems", "engine-1"]
    cmd += ["--workloads", "randwrite-4k-qd1", "--repeats", "1", "--size", args.size]
    cmd += ["--seconds", str(args.seconds), "--local-link", args.local_link]
    cmd += ["--json", os.path.join(work, "engine.json")]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        procs: dict[int, str] = {}
        while time.monotonic() < deadline and bench.poll() is None:
            procs = tree(bench.pid)
            if any("--rw=randwrite" in c for c in procs.values()):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("fio's random writes never started")
        time.sleep(3)  # past fio's ramp
        procs = tree(bench.pid)
        engine = [p for p, c in procs.items() if " engine --volume" in c]
        replica = [p for p, c in procs.items() if " replica-server " in c]
        fio = [p for p, c in procs.items() if c.startswith("fio ") and "--rw=randwrite" in c]
        if len(engine) != 1 or len(replica) != 1 or not fio:
            raise SystemExit(f"not one engine, one replica server and fio: {procs}")
        data = os.path.join(work, "perf.data")
        events = "raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch"
        events += ",sched:sched_wakeup"
        pids = ",".join(str(p) for p in [*engine, *replica, *fio])
        record = ["perf", "record", "-q", "-o", data, "-e", events, "-p", pids]
        record += ["--", "sleep", str(args.record)]
        subprocess.run(record, check=True, stdout=subprocess.DEVNULL)
        script = ["perf", "script", "-i", data, "-F", "comm,tid,cpu,time,event,trace"]
        text = subprocess.run(script, check=True, capture_output=True, text=True).stdout
        out, _ = bench.communicate(timeout=300)
    finally:
        if bench.poll() is None:
            bench.terminate()  # engine.py stops every process it started on SIGTERM
            bench.wait(timeout=60)
    print(out.strip().splitlines()[-4] if out.strip() else "")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}; local link: {args.local_link}")
    report(follow(text, str(engine[0]), str(replica[0])))


if __name__ == "__main__":
    main()
