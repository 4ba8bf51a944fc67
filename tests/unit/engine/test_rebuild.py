"""Where a rebuild starts: a delta from the target's generation only when its history is a
prefix of the source's; a full copy for forks and unknown pasts (pure logic)."""

from __future__ import annotations

from cargohold.engine.rebuild import delta_start
from cargohold.engine.replica_link import ReplicaLink, ReplicaSpec


def link(history, generation, seen=None) -> ReplicaLink:  # type: ignore[no-untyped-def]
    lk = ReplicaLink(ReplicaSpec("r", "127.0.0.1", 1))
    lk.history, lk.generation = history, generation
    lk.seen = generation if seen is None else seen
    return lk


def test_empty_replica_gets_a_full_copy_without_clearing():
    assert delta_start(link([], 0), [[1, 1]], 50) == 0


def test_same_epoch_behind_gets_a_delta():
    assert delta_start(link([[1, 1]], 40), [[1, 1]], 90) == 40
    assert delta_start(link([[1, 1]], 40, seen=45), [[1, 1]], 90) == 40  # a gap, same history


def test_a_later_epoch_on_the_source_still_allows_a_delta_up_to_the_fork_point():
    # the source went on under epoch 2 from generation 61; the target stopped at 40 in epoch 1
    assert delta_start(link([[1, 1]], 40), [[1, 1], [2, 61]], 90) == 40


def test_a_fork_gets_a_full_copy():
    # an epoch-1 engine kept writing to the target (up to 70) after the source's epoch-1
    # part ended at 60: the target holds mutations 61..70 that nobody else has
    assert delta_start(link([[1, 1]], 70), [[1, 1], [2, 61]], 90) is None
    # the target's last epoch is one the source never had
    assert delta_start(link([[1, 1], [3, 50]], 55), [[1, 1], [2, 41]], 90) is None


def test_a_replica_with_data_but_no_history_gets_a_full_copy():
    assert delta_start(link([], 10), [[1, 1]], 90) is None
