"""The volume page's I/O sparklines (pure): IOPS and MB/s, read and write, from the
manager's in-memory history of the engine's counters (control/io_history.py), each with
a text alternative (the last value and the peak). Called by app.py's volume fragment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cargohold.control.io_history import Rate
from cargohold.ui.sparkline import svg

MB = 1e6


@dataclass(frozen=True)
class Spark:
    """One sparkline: its ``svg`` (with ``text`` as its accessible name), and ``text``."""

    what: str
    svg: str
    text: str


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def io_sparks(volume: str, rates: Sequence[Rate | None]) -> list[Spark]:
    """Read IOPS, write IOPS, read MB/s, write MB/s; gaps (no rate: detached, an engine
    restart) are drawn at 0. Empty when there is nothing to draw yet."""
    if not any(r is not None for r in rates):
        return []
    out = []
    for what, pick in (
        ("read IOPS", lambda r: r.read_iops),
        ("write IOPS", lambda r: r.write_iops),
        ("read MB/s", lambda r: r.read_bps / MB),
        ("write MB/s", lambda r: r.write_bps / MB),
    ):
        values = [pick(r) if r is not None else 0.0 for r in rates]
        last = pick(rates[-1]) if rates[-1] is not None else 0.0  # a gap: nothing now
        text = f"{what}: now {_fmt(last)}, peak {_fmt(max(values))}"
        label = f"{what} of {volume}, last {len(values)} samples; {text}"
        out.append(Spark(what, svg(values, label), text))
    return out
