"""Replica placement: a pure function from the cluster's records to (node, disk) pairs.

Called by the manager's service (creating a volume) and its reconcilers (replacing lost
replicas, growing the replica count). No I/O and no clock: the same records always give
the same placement, so it is tested directly (tests/unit/control/test_scheduler.py).

Rules, in order:

1. **Eligible nodes**: up (not down, cordoned or draining), carrying every requested node
   tag, and not already holding a replica of the volume — N replicas are always on N
   distinct nodes. Replicas being deleted do not count; replicas being evicted (drained)
   still do until they are gone.
2. **Eligible disks** of such a node: schedulable, carrying every requested disk tag, and
   with room: a disk's allocation is the sum of ``size_bytes`` of the replicas on it that
   are not being deleted (every volume's), and a new replica fits if
   ``allocation + size_bytes <= capacity_bytes * overprovisioning``. Of a node's fitting
   disks, the least allocated (allocation / capacity) is used; ties go by disk name.
3. **Zones** (with ``zone_spread``): each new replica goes to the zone holding the fewest
   replicas of the volume so far (existing ones included), so replicas land in distinct
   zones while there are unused zones, and otherwise as evenly as possible (3 replicas over
   2 zones: 2 + 1). A node without a zone (``zone == ""``) is a failure domain of its own:
   it counts as a zone by itself, so a cluster without zones spreads over nodes only, and
   in a mixed cluster an unzoned node is never assumed to share a fate with another.
   Zones are a preference, never a reason to fail: placement fails only when there are
   fewer eligible nodes than replicas to place.
4. **A preferred node** (``preferred_nodes``, e.g. where the pod will run, from CSI's
   topology) gets the first new replica when it is eligible, so its engine reads locally.
5. **Ties** (same zone count): the node whose chosen disk is least allocated, then the
   node name. Input order never matters.

When placement is impossible, ``Unschedulable`` says why, node by node, e.g.
``volume data: 3 replicas requested, 2 schedulable nodes: node-b is down; node-c has no
disk with room for 10 GiB (disk-0: 38 GiB of 20 GiB allocated, over-provisioning 2.0
allows 40 GiB)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cargohold.control.model import Disk, Node, NodeState, Replica
from cargohold.errors import InvalidArgument, Unschedulable


@dataclass(frozen=True)
class PlacementRequest:
    volume: str
    size_bytes: int
    count: int  # how many NEW replicas to place
    zone_spread: bool = True
    node_tags: tuple[str, ...] = ()  # a node must carry all of them
    disk_tags: tuple[str, ...] = ()  # a disk must carry all of them
    preferred_nodes: tuple[str, ...] = ()  # the first replica goes to the first eligible one


@dataclass(frozen=True)
class _Candidate:
    node: str
    zone: str  # the zone key: the zone, or the node itself when it has none
    disk: str
    fraction: float  # the chosen disk's allocated fraction


def zone_key(node: Node) -> str:
    """The failure domain a node counts in for zone spreading (rule 3)."""
    return node.zone if node.zone else f"node/{node.name}"


def place(
    request: PlacementRequest,
    nodes: Sequence[Node],
    disks: Sequence[Disk],
    replicas: Sequence[Replica],
    *,
    overprovisioning: float = 2.0,
) -> list[tuple[str, str]]:
    """Where to put ``request.count`` new replicas of ``request.volume``: a list of
    ``(node name, disk name)`` in placement order, or ``Unschedulable`` saying why not."""
    if request.count < 0 or request.size_bytes < 0:
        raise InvalidArgument(
            f"volume {request.volume}: count ({request.count}) and size "
            f"({request.size_bytes}) must not be negative"
        )
    if not overprovisioning > 0:
        raise InvalidArgument(f"over-provisioning ratio must be positive, not {overprovisioning}")
    if request.count == 0:
        return []
    live = [r for r in replicas if not r.deleting]
    allocated: Counter[tuple[str, str]] = Counter()
    for r in live:
        allocated[(r.node, r.disk)] += r.size_bytes
    mine = [r for r in live if r.volume == request.volume]
    occupied = {r.node for r in mine}
    by_name = {n.name: n for n in nodes}
    disks_of: dict[str, list[Disk]] = {}
    for d in sorted(disks, key=lambda d: (d.node, d.name)):
        disks_of.setdefault(d.node, []).append(d)

    eligible: list[_Candidate] = []
    reasons: list[str] = []
    for node in sorted(by_name.values(), key=lambda n: n.name):
        why = _node_problem(node, request, occupied)
        if why is None:
            disk, why = _best_disk(
                node, disks_of.get(node.name, []), request, allocated, overprovisioning
            )
            if disk is not None:
                eligible.append(
                    _Candidate(node.name, zone_key(node), disk.name, _fraction(disk, allocated))
                )
                continue
        reasons.append(f"{node.name} {why}")

    if len(eligible) < request.count:
        raise Unschedulable(_explain(request, len(mine), len(eligible), reasons))

    per_zone: Counter[str] = Counter()
    if request.zone_spread:
        for r in mine:
            holder = by_name.get(r.node)
            if holder is not None:
                per_zone[zone_key(holder)] += 1
    chosen: list[tuple[str, str]] = []
    left = list(eligible)
    for name in request.preferred_nodes:  # e.g. where the pod will run: local reads
        pick = next((c for c in left if c.node == name), None)
        if pick is not None:
            left.remove(pick)
            per_zone[pick.zone] += 1
            chosen.append((pick.node, pick.disk))
            break
    for _ in range(request.count - len(chosen)):
        best = min(
            left,
            key=lambda c: (
                per_zone[c.zone] if request.zone_spread else 0,
                c.fraction,
                c.node,
            ),
        )
        left.remove(best)
        per_zone[best.zone] += 1
        chosen.append((best.node, best.disk))
    return chosen


# --- eligibility ----------------------------------------------------------------------
def _node_problem(node: Node, request: PlacementRequest, occupied: set[str]) -> str | None:
    """Why no replica of this volume can go to ``node`` whatever its disks, or None."""
    if node.state is NodeState.DOWN:
        return "is down"
    if node.draining:
        return "is draining"
    if node.state is NodeState.CORDONED:
        return "is cordoned"
    if node.name in occupied:
        return f"already holds a replica of {request.volume}"
    missing = [t for t in request.node_tags if t not in node.tags]
    if missing:
        return f"lacks {_tags(missing)}"
    return None


def _best_disk(
    node: Node,
    disks: list[Disk],
    request: PlacementRequest,
    allocated: Counter[tuple[str, str]],
    ratio: float,
) -> tuple[Disk | None, str]:
    """The node's least allocated disk that fits, or None and why none does."""
    if not disks:
        return None, "has no disks"
    fits: list[Disk] = []
    problems: list[str] = []
    all_full = True
    for d in disks:
        missing = [t for t in request.disk_tags if t not in d.tags]
        if not d.schedulable:
            problems.append(f"{d.name} is not schedulable")
            all_full = False
        elif d.error:
            problems.append(f"{d.name} cannot be served ({d.error})")
            all_full = False
        elif missing:
            problems.append(f"{d.name} lacks {_tags(missing)}")
            all_full = False
        elif allocated[(node.name, d.name)] + request.size_bytes > d.capacity_bytes * ratio:
            problems.append(
                f"{d.name}: {human_size(allocated[(node.name, d.name)])} of "
                f"{human_size(d.capacity_bytes)} allocated, over-provisioning {float(ratio)} allows "
                f"{human_size(int(d.capacity_bytes * ratio))}"
            )
        else:
            fits.append(d)
    if fits:
        return min(fits, key=lambda d: (_fraction(d, allocated), d.name)), ""
    what = "disk with room" if all_full else "suitable disk"
    return None, f"has no {what} for {human_size(request.size_bytes)} ({'; '.join(problems)})"


def _fraction(disk: Disk, allocated: Counter[tuple[str, str]]) -> float:
    used = allocated[(disk.node, disk.name)]
    if disk.capacity_bytes <= 0:
        return float("inf")
    return used / disk.capacity_bytes


# --- words ----------------------------------------------------------------------------
def _explain(request: PlacementRequest, existing: int, eligible: int, reasons: list[str]) -> str:
    wanted = _plural(request.count, "replica")
    if existing:
        wanted = f"{request.count} more {'replica' if request.count == 1 else 'replicas'}"
        wanted += f" (it has {existing})"
    if reasons:
        why = "; ".join(reasons)
    elif eligible:
        why = "the cluster has no other nodes, and a volume's replicas go to distinct nodes"
    else:
        why = "no nodes are registered"
    return (
        f"volume {request.volume}: {wanted} requested, "
        f"{_plural(eligible, 'schedulable node')}: {why}"
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _tags(missing: list[str]) -> str:
    return ("tag " if len(missing) == 1 else "tags ") + ", ".join(missing)


def human_size(n: int) -> str:
    """Bytes in binary units, as people write them: 10 GiB, 1.5 TiB, 512 MiB, 100 B."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n} B"
