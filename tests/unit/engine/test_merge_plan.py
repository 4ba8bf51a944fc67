"""The plan of a start in doubt's merge (``engine/merge_plan.py``), checked exhaustively on
small volumes against a per-block oracle: for every block, the replica the source ends up
copying is the one with the newest record ((generation, settled)), ties to the source, then
the lowest index; nothing the source already holds at the best rank is copied; holes (no
record above G) rank lowest; a pending record ranks below a settled one of its generation
and above every older one."""

from __future__ import annotations

import itertools

import pytest

from cargohold.engine.merge_plan import Copy, blocks, plan

B = 4096
NONE = (0, 1)  # no record above G
RANKS = [NONE, (5, 0), (5, 1), (7, 1)]  # pending at 5, settled at 5, settled at 7


def as_runs(ranks: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Per-block (generation, settled) -> the joined runs the replica server sends."""
    out: list[tuple[int, int, int, int]] = []
    for i, (gen, settled) in enumerate(ranks):
        if gen == 0:
            continue
        run = (i * B, B, gen, 1 - settled)
        if out and out[-1][0] + out[-1][1] == run[0] and out[-1][2:] == run[2:]:
            out[-1] = (out[-1][0], out[-1][1] + B, gen, 1 - settled)
        else:
            out.append(run)
    return out


def oracle(per: list[list[tuple[int, int]]], target: int) -> list[tuple[int, int] | None]:
    """Per block: None (the target keeps its own) or (replica copied from, generation)."""
    order = [target, *(i for i in range(len(per)) if i != target)]
    out: list[tuple[int, int] | None] = []
    for b in range(len(per[0])):
        best = max(per[i][b] for i in order)
        winner = next(i for i in order if per[i][b] == best)
        out.append(None if winner == target else (winner, best[0]))
    return out


def applied(copies: list[Copy], nblocks: int) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = [None] * nblocks
    for c in copies:
        assert c.offset % B == 0 and c.length % B == 0 and c.length > 0
        for b in range(c.offset // B, (c.offset + c.length) // B):
            assert out[b] is None, "a block copied twice"
            out[b] = (c.source, c.generation)
    return out


def joined(copies: list[Copy]) -> bool:
    return all(
        not (
            a.offset + a.length == b.offset and (a.source, a.generation) == (b.source, b.generation)
        )
        for a, b in itertools.pairwise(copies)
    ) and all(a.offset + a.length <= b.offset for a, b in itertools.pairwise(copies))


@pytest.mark.parametrize(("replicas", "nblocks"), [(2, 3), (3, 2), (4, 1)])
def test_every_small_case_matches_the_per_block_oracle(replicas: int, nblocks: int) -> None:
    cases = 0
    for flat in itertools.product(RANKS, repeat=replicas * nblocks):
        per = [list(flat[i * nblocks : (i + 1) * nblocks]) for i in range(replicas)]
        runs = [as_runs(p) for p in per]
        for target in range(replicas):
            copies = plan(runs, target)
            assert applied(copies, nblocks) == oracle(per, target), (per, target, copies)
            assert joined(copies), copies
            assert blocks(copies, B) == sum(x is not None for x in oracle(per, target))
            cases += 1
    assert cases == replicas * len(RANKS) ** (replicas * nblocks)


def test_the_replica_that_failed_the_write_loses_to_one_that_stored_it() -> None:
    """The start's case: the old source (index 0) claimed generation 12 for block 3 and
    failed it (pending); replica 1 stored it; replica 2 never got it."""
    runs = [[(3 * B, B, 12, 1)], [(3 * B, B, 12, 0)], []]
    assert plan(runs, 0) == [Copy(3 * B, B, 1, 12)]
    assert plan(runs, 1) == []  # from replica 1's side nothing is newer


def test_equal_records_are_the_same_mutation_and_are_not_copied() -> None:
    runs = [[(0, 4 * B, 9, 0)], [(0, 4 * B, 9, 0)], [(0, 2 * B, 9, 0)]]
    assert plan(runs, 0) == [] and plan(runs, 2) == [Copy(2 * B, 2 * B, 0, 9)]


def test_ranges_are_joined_and_split_where_the_winner_changes() -> None:
    source = [(0, 2 * B, 4, 0)]
    peer1 = [(0, 8 * B, 6, 0)]
    peer2 = [(4 * B, 2 * B, 8, 0)]
    assert plan([source, peer1, peer2], 0) == [
        Copy(0, 4 * B, 1, 6),
        Copy(4 * B, 2 * B, 2, 8),
        Copy(6 * B, 2 * B, 1, 6),
    ]


def test_nothing_recorded_anywhere_means_nothing_to_copy() -> None:
    assert plan([[], [], []], 0) == [] and plan([[]], 0) == []
