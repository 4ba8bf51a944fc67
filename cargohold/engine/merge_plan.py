"""The plan of a start in doubt's merge, as a pure function: given what each current
replica recorded above the generation G they are all complete through, which byte ranges
the source must copy from which other replica so that each block ends up as the replica
whose record of it is newest holds it. Called by ``merge.merge_into``; the rules are in
docs/reliability.md ("After a machine crash", "The merge").

Input per replica: its runs above G, ``(offset, length, generation, pending)`` as CHANGED
with ``generations`` gives them (``replica_wire.generation_runs``). A block is ranked by
``(generation, settled)``: a newer record wins; at one generation a settled record (the
write completed) wins over a pending one (the write was claimed and not completed: the
block holds its value from before that generation); a block with no record above G
ranks lowest (it holds the value at G, which every current replica shares). Equal ranks
are the same numbered mutation and the same content: the source keeps its own, else the
replica that comes first (the callers' order: ``start_policy.sources``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from cargohold.protocol.replica_wire import GenerationRun


@dataclass(frozen=True)
class Copy:
    """Copy [offset, offset + length) from replica ``source`` (an index into the runs
    given to ``plan``) into the target, recorded at ``generation`` (the winner's record)."""

    offset: int
    length: int
    source: int
    generation: int


def _rank_at(runs: Sequence[GenerationRun], starts: list[int], pos: int) -> tuple[int, int]:
    """(generation, settled) of the block at byte ``pos`` in one replica's runs."""
    i = bisect.bisect_right(starts, pos) - 1
    if i >= 0:
        offset, length, generation, pending = runs[i]
        if pos < offset + length:
            return generation, 1 - pending
    return 0, 1  # nothing recorded above G: the value at G


def plan(runs: Sequence[Sequence[GenerationRun]], target: int = 0) -> list[Copy]:
    """The copies that give replica ``target`` every block's newest record (module doc).
    ``runs[i]``: replica i's runs, in order; ties go to ``target``, then the lowest index.
    -> copies in offset order, adjacent ones of the same source and generation joined."""
    edges = sorted({x for rs in runs for o, n, _, _ in rs for x in (o, o + n)})
    starts = [[r[0] for r in rs] for rs in runs]
    order = [target, *(i for i in range(len(runs)) if i != target)]
    out: list[Copy] = []
    for a, b in itertools.pairwise(edges):
        ranks = {i: _rank_at(runs[i], starts[i], a) for i in order}
        best = max(ranks.values())
        winner = next(i for i in order if ranks[i] == best)
        if winner == target:
            continue
        last = out[-1] if out else None
        if (
            last
            and last.offset + last.length == a
            and (last.source, last.generation)
            == (
                winner,
                best[0],
            )
        ):
            out[-1] = Copy(last.offset, last.length + b - a, winner, best[0])
        else:
            out.append(Copy(a, b - a, winner, best[0]))
    return out


def blocks(copies: Sequence[Copy], block_size: int) -> int:
    """How many blocks the copies cover (the ``merged_blocks`` they add)."""
    return sum(c.length for c in copies) // block_size
