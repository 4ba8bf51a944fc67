"""Whether a replica an agent reports on its disk may be deleted: a pure policy function.

Invariant 7: nothing is deleted on absence of evidence. A replica is deleted only on
positive evidence that the state store recorded its deletion — its record says
``deleting``, or a tombstone for it exists — and only when it belongs to this manager's
cluster. A replica that no record names and no tombstone condemns is an ORPHAN: kept, and
reported (``cargohold replica orphans``) until an operator deletes it or ``orphan_grace``
passes.

A tombstone condemns a replica only until its node has reported the replica gone
(``done_at``): one that shows up again after that — moved back from the trash by an
operator, or on a disk that was missing for a while — is an orphan, kept.

The replica's cluster is its own stamp (written at CREATE); a replica made before cluster
ids existed has none and counts as its disk's (the disk is stamped the first time the
agent learns its cluster id). A replica with neither counts as this cluster's only when
the manager has no cluster id either (an in-memory test store).
"""

from __future__ import annotations

from enum import StrEnum

from cargohold.control.model import Replica, ReplicaReport, Tombstone


class Verdict(StrEnum):
    KEEP = "keep"  # a record names it, and does not want it deleted
    DELETE = "delete"  # positive evidence, same cluster
    ORPHAN = "orphan"  # no record, no tombstone: report and keep
    FOREIGN = "foreign"  # evidence, but another cluster's replica (or disk): keep, report


def replica_cluster(report: ReplicaReport) -> str:
    """The cluster a replica on disk belongs to: its own stamp, else its disk's."""
    return report.cluster_id or report.disk_cluster_id


def decide(
    report: ReplicaReport,
    record: Replica | None,
    tombstone: Tombstone | None,
    cluster_id: str,
) -> Verdict:
    """What to do with ``report`` (a replica on a node's disk), given its record (None when
    there is none), its tombstone (None when there is none) and the manager's cluster id."""
    same = replica_cluster(report) == cluster_id
    if record is not None:
        if not record.deleting:
            return Verdict.KEEP
        return Verdict.DELETE if same else Verdict.FOREIGN
    if tombstone is not None and tombstone.replica == report.id and tombstone.done_at is None:
        if same and tombstone.cluster_id == cluster_id:
            return Verdict.DELETE
        return Verdict.FOREIGN
    return Verdict.ORPHAN
