"""Which replica's content wins where replicas disagree (scrubber.current_by_block)."""

from __future__ import annotations

import numpy as np

from cargohold.engine.scrubber import current_by_block


def _info(gen: int, epoch: int = 1, seen: int | None = None) -> dict:
    return {"generation": gen, "seen": gen if seen is None else seen, "history": [[epoch, 1]]}


def test_the_replica_with_the_newest_history_wins_every_block():
    crcs = np.array([[1, 2], [3, 4], [3, 4]], dtype="<u4")
    got = current_by_block([_info(5, epoch=2), _info(9, epoch=1), _info(9, epoch=1)], crcs)
    assert got.tolist() == [0, 0]  # a later epoch beats a higher generation of an older one
    got = current_by_block([_info(5), _info(6), _info(5)], crcs)
    assert got.tolist() == [1, 1]


def test_equal_replicas_take_the_majority_value_per_block():
    crcs = np.array([[1, 7, 1], [2, 7, 1], [1, 8, 2]], dtype="<u4")
    got = current_by_block([_info(4)] * 3, crcs)
    assert got.tolist() == [0, 0, 0]
    crcs = np.array([[5, 1], [6, 1], [1, 9]], dtype="<u4")
    assert current_by_block([_info(4)] * 3, crcs).tolist() == [-1, 0]


def test_two_equal_replicas_that_disagree_are_undecidable():
    crcs = np.array([[1, 2], [3, 4]], dtype="<u4")
    assert current_by_block([_info(4), _info(4)], crcs).tolist() == [-1, -1]
    # a lower replica does not vote among the current ones
    crcs = np.array([[1], [3], [3]], dtype="<u4")
    assert current_by_block([_info(4), _info(4), _info(3)], crcs).tolist() == [-1]


def test_a_replica_ahead_of_what_the_engine_issued_is_never_the_source():
    """A write around the engine with a guessed generation puts that replica *ahead*: by
    generation alone it would win and spread the foreign data."""
    crcs = np.array([[1], [2]], dtype="<u4")
    infos = [_info(10), _info(11)]
    assert current_by_block(infos, crcs).tolist() == [1]  # without the engine's number
    assert current_by_block(infos, crcs, issued=10).tolist() == [0]
    crcs = np.array([[1], [2], [1]], dtype="<u4")
    infos = [_info(10), _info(10, seen=12), _info(10)]  # a gap: seen above generation
    assert current_by_block(infos, crcs, issued=10).tolist() == [0]
    assert current_by_block([_info(11), _info(12)], crcs[:2], issued=10).tolist() == [-1]
