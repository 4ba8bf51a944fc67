"""The event log's policy (pure): which events a query returns, and which pruning deletes.

Events (``model.Event``) are small records under ``/events/<id>``, ids sortable by time.
The log is bounded twice: at most ``PER_VOLUME`` events per volume (a volume that flaps
cannot push every other volume's history out) and ``OVERALL`` in all; the oldest go first.
The node reconciler prunes once a pass (``Repository.trim_events``). Called by the
repository and ``ClusterCalls.events`` (GET /api/v1/events); docs/observability.md.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from cargohold.control.model import Event

PER_VOLUME = 200  # the newest events kept per volume
OVERALL = 2000  # the newest events kept in all


def prune(
    events: Sequence[tuple[str, str]], per_volume: int = PER_VOLUME, overall: int = OVERALL
) -> list[str]:
    """``events``: (id, volume) oldest first ("" for no volume). -> the ids to delete:
    every volume's older than its newest ``per_volume``, then the oldest of what is left
    beyond ``overall``."""
    seen: collections.Counter[str] = collections.Counter()
    keep: list[str] = []
    drop: list[str] = []
    for eid, volume in reversed(events):  # newest first
        if volume:
            seen[volume] += 1
            if seen[volume] > per_volume:
                drop.append(eid)
                continue
        keep.append(eid)
    drop.extend(keep[overall:])  # keep is newest first: beyond ``overall`` are the oldest
    return sorted(drop)


def select(
    events: Sequence[Event],
    volume: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The events of ``volume`` (None: all) after ``since`` (Unix seconds), the newest
    ``limit`` of them, oldest first (``events`` is oldest first)."""
    out = [
        e
        for e in events
        if (volume is None or e.volume == volume) and (since is None or e.at > since)
    ]
    return out[-limit:] if limit is not None else out
