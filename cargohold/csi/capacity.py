"""GetCapacity's arithmetic: how much a StorageClass can still provision. Pure; no I/O.

Called by controller.py with the manager's nodes, disks, replicas and volumes. The answer
the kube-scheduler needs (CSIStorageCapacity objects, made by external-provisioner's
``--enable-capacity``) is "can a PVC of this class and this size still be made", so:

- Only what the class could use counts: disks that are schedulable and carry every tag of
  ``diskSelector``, on nodes that are up (not down or cordoned) and carry every tag of
  ``nodeSelector``. A disk's free space is its capacity minus the sizes of the replicas
  on it (over-provisioning is not counted: what is reported can always be placed).
- A volume of N replicas (``numberOfReplicas``; 3 when not given, the manager's default)
  needs N placements on N distinct nodes, each replica whole on one disk. So
  ``maximum_volume_size`` is the N-th largest of the nodes' largest free disk, and
  ``available_capacity`` is the largest total T of such volumes that fit, where a node
  can hold at most one replica of each volume: N·T ≤ Σ over nodes of min(free, T).
  Fewer than N eligible nodes: 0 and 0.
- Topology: a volume is reachable over the network from every node, so every topology
  segment that names an up node gets the cluster's answer; a segment that names none
  gets 0 (mirrors CreateVolume, which refuses such a requirement).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BLOCK = 4096


@dataclass(frozen=True)
class Capacity:
    available: int
    maximum: int


def node_free(
    nodes: Iterable[Mapping[str, Any]],
    disks: Iterable[Mapping[str, Any]],
    replicas: Iterable[Mapping[str, Any]],
    volume_sizes: Mapping[str, int],
    node_tags: Iterable[str] = (),
    disk_tags: Iterable[str] = (),
) -> dict[str, list[int]]:
    """Free bytes of each eligible disk, by eligible node (manager API JSON in)."""
    need_n, need_d = set(node_tags), set(disk_tags)
    ok = {n["name"] for n in nodes if n.get("state") == "up" and need_n <= set(n.get("tags") or [])}
    used: dict[tuple[str, str], int] = {}
    for r in replicas:
        if r.get("state") == "deleting" or r.get("deleting"):
            continue
        key = (str(r.get("node")), str(r.get("disk")))
        used[key] = used.get(key, 0) + int(volume_sizes.get(str(r.get("volume")), 0))
    out: dict[str, list[int]] = {}
    for d in disks:
        if d["node"] not in ok or not d.get("schedulable", True):
            continue
        if not need_d <= set(d.get("tags") or []):
            continue
        free = max(0, int(d["capacity_bytes"]) - used.get((d["node"], d["name"]), 0))
        out.setdefault(d["node"], []).append(free)
    return out


def replicated(free: Mapping[str, list[int]], replicas: int) -> Capacity:
    """What volumes of ``replicas`` replicas can still take of ``free`` (see the module)."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    per_node = [sum(v) for v in free.values() if v]
    best_disk = sorted((max(v) for v in free.values() if v), reverse=True)
    if len(best_disk) < replicas:
        return Capacity(0, 0)
    maximum = best_disk[replicas - 1] // BLOCK * BLOCK

    def fits(total: int) -> bool:
        return sum(min(c, total) for c in per_node) >= replicas * total

    lo, hi = 0, sum(per_node) // replicas  # fits(lo) always; the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return Capacity(lo // BLOCK * BLOCK, maximum)
