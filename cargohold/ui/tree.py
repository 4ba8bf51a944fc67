"""A volume's snapshots as a tree (pure): its snapshots in the order they were taken (each
one a layer on the one before), and under each the volumes cloned from it.

Called by app.py's volume page; tested in tests/unit/ui/test_tree.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SnapNode:
    name: str
    state: str
    created_at: float
    size_bytes: int
    clones: list[str] = field(default_factory=list)  # volumes made from this snapshot


def snapshot_tree(
    snapshots: Iterable[Mapping[str, Any]], clones: Iterable[Mapping[str, Any]]
) -> list[SnapNode]:
    """``snapshots``: the volume's (API dicts); ``clones``: volumes whose ``source`` names
    this volume (their dicts, or records dumped). Oldest snapshot first; a clone made of the
    live volume (a snapshot taken for it) sits under that snapshot; one whose snapshot is
    gone is listed under a node named ``(deleted snapshot)``."""
    nodes = [
        SnapNode(
            s["name"],
            str(s.get("state", "")),
            float(s.get("created_at") or 0.0),
            int(s.get("size_bytes") or 0),
        )
        for s in snapshots
    ]
    nodes.sort(key=lambda n: (n.created_at, n.name))
    by_name = {n.name: n for n in nodes}
    orphaned: list[str] = []
    for c in clones:
        src = c.get("source") or {}
        snap = src.get("snapshot") if isinstance(src, Mapping) else None
        name = str(c.get("name"))
        if snap and snap in by_name:
            by_name[snap].clones.append(name)
            continue
        made_for = [n for n in nodes if n.name.startswith(f"clone-{name}-")]
        if made_for:
            made_for[0].clones.append(name)
        else:
            orphaned.append(name)
    for n in nodes:
        n.clones.sort()
    if orphaned:
        nodes.append(SnapNode("(deleted snapshot)", "", 0.0, 0, sorted(orphaned)))
    return nodes
