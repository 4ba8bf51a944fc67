"""What needs attention now (pure): the overview's "firing" list, worked out from the
records the manager holds — the same conditions deploy/monitoring/'s alert rules watch,
as the state store sees them at this moment (Prometheus adds the "for N minutes").

Called by app.py with the records the caller may see (a tenant: its own volumes, no
nodes or disks); tested in tests/unit/ui/test_conditions.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cargohold.control.model import Disk, Node, NodeState, Robustness, Volume

CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True)
class Condition:
    severity: str  # critical | warning
    kind: str  # volume-faulted, volume-degraded, volume-error, node-down, node-error, disk-error
    subject: str  # the volume's, node's or node/disk's name
    message: str
    link: str  # the console page about it


def conditions(
    volumes: Iterable[Volume], nodes: Iterable[Node] = (), disks: Iterable[Disk] = ()
) -> list[Condition]:
    """Every condition, critical first, then by subject."""
    out: list[Condition] = []
    for v in volumes:
        link = f"/ui/volumes/{v.name}"
        if v.deleting:
            continue
        if v.robustness is Robustness.FAULTED:
            out.append(Condition(CRITICAL, "volume-faulted", v.name, "no current replica", link))
        elif v.robustness is Robustness.DEGRADED:
            out.append(
                Condition(
                    WARNING,
                    "volume-degraded",
                    v.name,
                    f"fewer current replicas than the {v.replicas_wanted} wanted",
                    link,
                )
            )
        if v.error:
            out.append(Condition(WARNING, "volume-error", v.name, v.error, link))
    for n in nodes:
        link = "/ui/nodes"
        if n.state is NodeState.DOWN:
            out.append(Condition(CRITICAL, "node-down", n.name, "no heartbeat", link))
        if n.error:
            out.append(Condition(WARNING, "node-error", n.name, n.error, link))
    for d in disks:
        if d.error:
            out.append(Condition(WARNING, "disk-error", f"{d.node}/{d.name}", d.error, "/ui/nodes"))
        elif d.warning:
            out.append(
                Condition(WARNING, "disk-warning", f"{d.node}/{d.name}", d.warning, "/ui/nodes")
            )
    out.sort(key=lambda c: (c.severity != CRITICAL, c.kind, c.subject))
    return out
