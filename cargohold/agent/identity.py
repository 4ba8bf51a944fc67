"""Whether a node agent acts for the manager that answered it: a pure policy function.

Invariant 7 from the agent's side. The agent refuses to act at all — creates, deletions,
engine changes, operations — and keeps everything that runs running, when:

- a disk's stamp (``cargohold-disk.json``) names another cluster than the manager's (or is
  unreadable), or the manager sends no cluster id while the disks carry one;
- the node's disks hold replicas and the manager's assignments name none of them, while
  none of them carries the manager's cluster id: a manager with an empty (or another
  cluster's) state store, whose disks were never stamped (an upgrade from a version
  before cluster ids, at the same time as the mistake).

Otherwise it acts, and stamps each unstamped disk with the manager's cluster id when the
disk holds no replicas, or the manager knows one of them, or one carries that cluster id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cargohold.control.model import ReplicaReport


@dataclass(frozen=True)
class Allegiance:
    refusal: str = ""  # "" = act for this manager
    stamp: list[str] = field(default_factory=list)  # disks to stamp with its cluster id


def judge(
    cluster_id: str,
    stamps: dict[str, str | None],
    broken: dict[str, str],
    replicas: list[ReplicaReport],
    assigned: set[str],
) -> Allegiance:
    """``stamps``: disk path -> its cluster id (None: unstamped); ``broken``: disk path ->
    why its stamp is unreadable; ``replicas``: what the node's replica server lists;
    ``assigned``: the replica ids the manager's assignments name (kept or deleted)."""
    for disk, why in sorted(broken.items()):
        return Allegiance(f"disk {disk}: its stamp is unreadable ({why}); acting for no manager")
    for disk, cid in sorted(stamps.items()):
        if cid is not None and cid != cluster_id:
            manager = f"cluster {cluster_id}" if cluster_id else "no cluster id (older version?)"
            return Allegiance(
                f"cluster id mismatch: disk {disk} belongs to cluster {cid}, the manager "
                f"answers for {manager}; a wrong state store? refusing to act (nothing is "
                "deleted, everything running keeps running)"
            )
    mine = [r for r in replicas if (r.cluster_id or stamps.get(r.disk_path) or "") == cluster_id]
    if replicas and not mine and not (assigned & {r.id for r in replicas}):
        return Allegiance(
            f"this node holds {len(replicas)} replica(s) and the manager (cluster "
            f"{cluster_id or '-'}) knows none of them: an empty or another cluster's state "
            "store? refusing to act (nothing is deleted, everything running keeps running)"
        )
    stamp = []
    if cluster_id:
        for disk, cid in sorted(stamps.items()):
            if cid is not None:
                continue
            here = [r for r in replicas if r.disk_path == disk]
            if not here or any(r.id in assigned or r.cluster_id == cluster_id for r in here):
                stamp.append(disk)
    return Allegiance("", stamp)
