"""The process tree from /proc, for the benchmarks that measure a system's processes (its
CPU time: ``engine.cpu_seconds``; its command lines: ``write_path_timeline.tree``): one walk
of /proc, one place that parses ``/proc/<pid>/stat``."""

from __future__ import annotations

import os


def scan() -> dict[int, list[str]]:
    """pid -> the fields of its /proc/<pid>/stat after the command name (field 4, the
    parent's pid, is ``[1]``; utime and stime are ``[11]`` and ``[12]``), for every process
    that could be read."""
    out: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                out[int(d)] = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
    return out


def descendants(root: int, stats: dict[int, list[str]]) -> list[int]:
    """``root`` and every process below it in ``stats`` (``scan()``), root first."""
    kids: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        kids.setdefault(int(fields[1]), []).append(pid)
    out, todo, seen = [], [root], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo += kids.get(p, [])
    return out
