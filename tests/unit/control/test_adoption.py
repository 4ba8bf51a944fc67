"""control.adoption.plan_adoption: which orphans become a volume again, and when it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cargohold.control.adoption import check_adoptable, plan_adoption
from cargohold.errors import AlreadyExists, NotFound, WrongState

CLUSTER = "c-" + "a" * 32


@dataclass
class Orph:  # an orphan record, as model.Orphan has it
    id: str
    node: str
    history: list[list[int]]
    generation: int
    seen: int = -1
    volume: str = "data"
    disk_path: str = "/d/disk-0"
    size_bytes: int = 1 << 30
    epoch: int = 0
    snapshots: list[str] = field(default_factory=list)
    cluster_id: str = CLUSTER

    def __post_init__(self) -> None:
        if self.seen < 0:
            self.seen = self.generation
        if not self.epoch:
            self.epoch = self.history[-1][0] if self.history else 0


def test_current_and_stale_replicas():
    orphans = [
        Orph("data-r1", "node-1", [[1, 1], [3, 10]], 40, snapshots=["s1", "s2"]),
        Orph("data-r2", "node-2", [[1, 1], [3, 10]], 40, snapshots=["s1"]),
        Orph("data-r3", "node-3", [[1, 1]], 9, epoch=2, snapshots=["s1"]),  # left behind in epoch 1
        Orph("other-r9", "node-3", [[1, 1]], 5, volume="other"),
    ]
    plan = plan_adoption("data", orphans, CLUSTER)
    roles = {r.id: r.role for r in plan.replicas}
    assert roles == {"data-r1": "current", "data-r2": "current", "data-r3": "stale"}
    assert (plan.current_epoch, plan.current_generation) == (3, 40)
    assert plan.epoch == 3
    assert plan.snapshots == ["s1"] and plan.partial_snapshots == ["s2"]
    assert plan.left_out == []


def test_epoch_is_the_highest_fence_any_replica_holds():
    """A replica fenced at a higher epoch than it wrote in (an engine that opened it and
    never wrote) must still be fenced out by the next engine."""
    orphans = [Orph("data-r1", "n1", [[1, 1], [3, 10]], 40, epoch=7)]
    assert plan_adoption("data", orphans, CLUSTER).epoch == 7


def test_a_fork_is_refused_unless_accepted_and_then_left_on_disk():
    orphans = [
        Orph("data-r1", "n1", [[1, 1], [3, 10], [4, 30]], 35),
        Orph("data-r2", "n2", [[1, 1], [3, 10]], 33),  # epoch 3 wrote 30..33 after epoch 4 began
        Orph("data-r3", "n3", [[1, 1], [3, 10]], 29),  # epoch 3 up to 29: on the line
    ]
    with pytest.raises(WrongState, match="data-r2 hold writes"):
        plan_adoption("data", orphans, CLUSTER)
    plan = plan_adoption("data", orphans, CLUSTER, accept_fork=True)
    assert {r.id: r.role for r in plan.replicas} == {"data-r1": "current", "data-r3": "stale"}
    assert [x.id for x in plan.left_out] == ["data-r2"]
    assert "forks" in plan.left_out[0].reason


def test_newest_replicas_with_different_histories_are_refused():
    orphans = [
        Orph("data-r1", "n1", [[1, 1], [4, 30]], 35),
        Orph("data-r2", "n2", [[2, 1], [4, 30]], 35),
    ]
    with pytest.raises(WrongState, match="disagree"):
        plan_adoption("data", orphans, CLUSTER)
    plan = plan_adoption("data", orphans, CLUSTER, only=["data-r2"])
    assert [r.id for r in plan.replicas] == ["data-r2"]
    assert [(x.id, x.reason) for x in plan.left_out] == [("data-r1", "not chosen")]


def test_another_clusters_replicas_are_never_adopted():
    other = "c-" + "b" * 32
    orphans = [
        Orph("data-r1", "n1", [[1, 1]], 5, cluster_id=other),
        Orph("data-r2", "n2", [[1, 1]], 4, cluster_id=""),  # unstamped (older version): ours
    ]
    plan = plan_adoption("data", orphans, CLUSTER)
    assert [r.id for r in plan.replicas] == ["data-r2"]
    assert plan.left_out[0].id == "data-r1" and other in plan.left_out[0].reason
    with pytest.raises(WrongState, match="belongs to this cluster"):
        plan_adoption("data", orphans[:1], CLUSTER)


def test_nothing_to_adopt():
    with pytest.raises(NotFound):
        plan_adoption("data", [Orph("x-r1", "n1", [[1, 1]], 1, volume="x")], CLUSTER)
    with pytest.raises(NotFound, match="data-r7"):
        plan_adoption("data", [Orph("data-r1", "n1", [[1, 1]], 1)], CLUSTER, only=["data-r7"])


def test_an_empty_replica_is_adopted_as_stale():
    orphans = [Orph("data-r1", "n1", [[2, 1]], 8), Orph("data-r2", "n2", [], 0)]
    plan = plan_adoption("data", orphans, CLUSTER)
    assert {r.id: r.role for r in plan.replicas} == {"data-r1": "current", "data-r2": "stale"}


def test_never_merges_into_an_existing_volume():
    with pytest.raises(AlreadyExists):
        check_adoptable("data", ["data", "x"])
    check_adoptable("data", ["x"])
