"""The rules of an engine's start (``engine/start_policy.py``), pure: which replicas are
current, when they are in doubt, which one is the source, the starting generation, and
when a shortfall against the manager's record is accepted. The same rules driven through
``Volume.start`` against replica servers: test_start_doubt.py."""

from __future__ import annotations

from cargohold.engine import start_policy as policy
from cargohold.engine.replica_link import ReplicaLink, ReplicaSpec


def link(
    i: int,
    generation: int,
    seen: int | None = None,
    power_loss: bool = False,
    local: bool = False,
    history: list[list[int]] | None = None,
    answered: bool = True,
) -> ReplicaLink:
    lk = ReplicaLink(ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i, local))
    lk.generation = generation
    lk.seen = generation if seen is None else seen
    lk.power_loss = power_loss
    lk.history = [[1, 1]] if history is None else history
    lk.client = object() if answered else None  # type: ignore[assignment]
    return lk


def test_current_is_the_newest_epoch_then_generation():
    a, b, c = link(0, 10), link(1, 10), link(2, 12, history=[[1, 1]])
    assert policy.current([a, b, c]) == ((1, 12), [c])
    d = link(3, 5, history=[[1, 1], [2, 4]])  # a later epoch beats a higher generation
    assert policy.current([a, c, d]) == ((2, 5), [d])
    top, cur = policy.current([a, b])
    assert top == (1, 10) and cur == [a, b] and cur[0] is a


def test_in_doubt_after_a_power_loss_or_a_gap():
    assert not policy.in_doubt(link(0, 10))
    assert policy.in_doubt(link(0, 10, power_loss=True))
    assert policy.in_doubt(link(0, 10, seen=11))  # a write failed after taking its number
    assert not policy.doubt([link(0, 10), link(1, 10)])
    assert policy.doubt([link(0, 10), link(1, 10, seen=12)])
    assert policy.doubt([link(0, 0, power_loss=True)])  # even with nothing written


def test_the_source_is_the_one_that_saw_most_then_one_not_in_doubt_then_the_local_one():
    plain = link(0, 10)
    local = link(1, 10, power_loss=True, local=True)
    most = link(2, 10, seen=14)
    # the one that saw most may hold an acknowledged write the others were dropped for
    assert policy.sources([most, local, plain]) == [most, plain, local]
    assert policy.sources([local, plain]) == [plain, local]
    other = link(7, 10, power_loss=True)
    assert policy.sources([other, local]) == [local, other]
    low, high = link(3, 10, seen=11), link(4, 10, seen=13, power_loss=True)
    assert policy.sources([low, high]) == [high, low]
    a, b = link(5, 10, power_loss=True), link(6, 10, power_loss=True)
    assert policy.sources([a, b]) == [a, b]  # a tie: the order given (the volume's)


def test_the_starting_generation_is_the_newest_seen_and_at_least_the_floor():
    cur = [link(0, 10, seen=12), link(1, 10, seen=11)]
    assert policy.starting_generation(cur) == 12
    assert policy.starting_generation(cur, floor=20) == 20
    assert policy.starting_generation(cur, floor=3) == 12


def test_meets_compares_epoch_and_generation_or_the_generation_alone():
    assert policy.meets((0, 0), (0, 0))
    assert policy.meets((1, 10), (1, 10)) and policy.meets((1, 10), (2, 3))
    assert not policy.meets((1, 10), (1, 9)) and not policy.meets((2, 1), (1, 99))
    assert policy.meets((0, 10), (0, 10)) and not policy.meets((0, 10), (5, 9))


def test_a_shortfall_is_accepted_only_when_all_answered_and_every_current_one_lost_power():
    cur = [link(0, 8, power_loss=True), link(1, 8, power_loss=True)]
    stale = link(2, 5)  # not current: whether it lost power does not matter
    assert policy.shortfall_accepted([*cur, stale], cur)
    # a current one that did not lose power: what the manager saw may be what it lacks
    mixed = [link(0, 8, power_loss=True), link(1, 8)]
    assert not policy.shortfall_accepted(mixed, mixed)
    # one did not answer: it may hold the newer data
    gone = link(2, 0, answered=False)
    assert not policy.shortfall_accepted([*cur, gone], cur)
    # a gap alone (a write that failed everywhere) is no power loss: never accepted
    gaps = [link(0, 8, seen=9), link(1, 8, seen=9)]
    assert not policy.shortfall_accepted(gaps, gaps)
    assert not policy.shortfall_accepted([], [])


def test_the_accepted_loss_says_what_was_recorded_and_what_is_kept():
    text = policy.accepted_loss("v", (1, 30), (1, 20), 30)
    assert "epoch 1, generation 20 although epoch 1, generation 30 was recorded" in text
    assert "lost power" in text and "from generation 30" in text
