"""The last minutes of each volume's I/O, in the manager's memory only, for the console's
sparklines (ui/app.py, docs/ui.md "Volume page"). Prometheus keeps the full history
(docs/observability.md); this is what the manager can draw without one.

Each heartbeat carries, per running engine, four counter totals (``EngineReport.status``
``io``: read and write requests, bytes read and written; agent/engine_process.py). ``add``
keeps them as a sample with the manager's clock; ``rates`` turns consecutive samples into
per-second rates. Pure (no I/O, the clock is passed in).

- A ring of ``SAMPLES`` samples per volume, six doubles each in one ``array``: about
  3 KB a volume, ~6 MB for 2,000 volumes (tests/unit/control/test_io_history.py measures it).
- A counter that went down (the engine restarted, its counters start again at 0), a new
  engine epoch, a sample older than the last, or more than ``GAP`` seconds between two
  samples (the volume was detached, the node silent): no rate for that interval (a gap,
  None), never a negative or made-up one.
- ``gap`` marks a volume detached; a ring without a sample for ``STALE`` seconds (a deleted
  volume) is dropped when the next new ring is made (``sweep``).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

SAMPLES = 60  # samples kept per volume (one a heartbeat: a few minutes)
GAP = 30.0  # seconds between two samples beyond which the interval is a gap
FIELDS = ("read", "write", "read_bytes", "written_bytes")  # the engine's counter names
_W = 2 + len(FIELDS)  # a sample: time, epoch, the four counters
_NAN = math.nan


@dataclass(frozen=True)
class Rate:
    """One interval's rates, per second; ``at`` is its end (the manager's clock)."""

    at: float
    read_iops: float
    write_iops: float
    read_bps: float
    write_bps: float


def io_counters(status: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The four counters in an engine's reported status (``io``), or None when they are
    missing or malformed (an older agent; an engine's status is not trusted)."""
    io = status.get("io")
    if not isinstance(io, Mapping):
        return None
    out = []
    for k in FIELDS:
        x = io.get(k)
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
            return None
        out.append(float(x))
    return tuple(out)


class Ring:
    """One volume's last ``size`` samples (oldest overwritten)."""

    __slots__ = ("buf", "head", "n", "size")

    def __init__(self, size: int = SAMPLES) -> None:
        self.size = size
        self.buf = array("d", [_NAN]) * (size * _W)
        self.head = 0  # where the next sample goes
        self.n = 0

    def push(self, sample: tuple[float, ...]) -> None:
        i = self.head * _W
        self.buf[i : i + _W] = array("d", sample)
        self.head = (self.head + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def samples(self) -> list[tuple[float, ...]]:
        """Oldest first."""
        start = (self.head - self.n) % self.size
        out = []
        for k in range(self.n):
            i = ((start + k) % self.size) * _W
            out.append(tuple(self.buf[i : i + _W]))
        return out

    def last(self) -> tuple[float, ...] | None:
        if not self.n:
            return None
        i = ((self.head - 1) % self.size) * _W
        return tuple(self.buf[i : i + _W])


STALE = 600.0  # seconds without a sample after which a volume's ring is dropped


class IoHistory:
    """The rings of all volumes (``ServiceBase.io_history``)."""

    def __init__(self, size: int = SAMPLES, gap: float = GAP) -> None:
        self.size, self.gap_after = size, gap
        self.rings: dict[str, Ring] = {}

    def add(self, volume: str, at: float, epoch: int, counters: tuple[float, ...]) -> None:
        ring = self.rings.get(volume)
        if ring is None:
            self.sweep(at)
            ring = self.rings[volume] = Ring(self.size)
        ring.push((at, float(epoch), *counters))

    def sweep(self, now: float, stale: float = STALE) -> None:
        """Drop the rings with no sample for ``stale`` seconds (deleted volumes, volumes
        detached long ago): run when a ring is created, so the rings kept are those of
        the volumes reported on in the last ``stale`` seconds."""
        for name in [n for n, r in self.rings.items() if (x := r.last()) and now - x[0] > stale]:
            del self.rings[name]

    def gap(self, volume: str, at: float) -> None:
        """The volume has no running engine now (detached): the next interval is a gap."""
        ring = self.rings.get(volume)
        if ring is not None and (last := ring.last()) is not None and not math.isnan(last[1]):
            ring.push((at, _NAN, _NAN, _NAN, _NAN, _NAN))

    def forget(self, volume: str) -> None:
        self.rings.pop(volume, None)

    def rates(self, volume: str, now: float | None = None) -> list[Rate | None]:
        """One entry per interval between consecutive samples, oldest first: its rates, or
        None for a gap (see the module's docstring); with ``now``, one more gap when the
        last sample is over ``GAP`` seconds old (no reports since: detached, node silent)."""
        ring = self.rings.get(volume)
        if ring is None:
            return []
        s = ring.samples()
        out = [interval(a, b, self.gap_after) for a, b in pairwise(s)]
        if out and now is not None and now - s[-1][0] > self.gap_after and out[-1] is not None:
            out.append(None)
        return out


def interval(a: tuple[float, ...], b: tuple[float, ...], gap: float = GAP) -> Rate | None:
    """The rates between samples ``a`` and ``b`` (time, epoch, four counters), or None."""
    dt = b[0] - a[0]
    if not (0 < dt <= gap) or math.isnan(a[1]) or math.isnan(b[1]) or a[1] != b[1]:
        return None
    d = [y - x for x, y in zip(a[2:], b[2:], strict=True)]
    if any(x < 0 or math.isnan(x) for x in d):
        return None  # a counter went back: the engine restarted
    return Rate(b[0], d[0] / dt, d[1] / dt, d[2] / dt, d[3] / dt)
