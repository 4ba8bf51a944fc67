"""How an engine starts, as pure rules over its replicas as OPEN reported them
(``ReplicaLink``: generation, seen, history, power_loss). Called by ``volume.Volume.start``,
which does the I/O. docs/engine.md ("What the engine guarantees") and docs/reliability.md
("After a machine crash") say the same for users.

- **Current** (``current``): the reachable replicas with the newest (epoch of their last
  mutation, generation), compared like Raft's (term, index) (``lineage.rank``; invariant 4).
- **In doubt** (``in_doubt``, ``doubt``): a current replica that reports a power loss (its
  store found that the machine crashed since it last closed: it is complete only through
  its last completed FLUSH, and above that it may hold some of the later mutations, in any
  mix) or that saw a mutation above its generation (a gap: a write that failed after it
  took its number, on every replica alike when the write failed everywhere). Then the
  current replicas may differ above their generation, in blocks only one of them changed,
  and all of them serving reads would return different data for ever. So one of them, the
  **source** (``sources``: the one that saw the newest mutation, then one not in doubt,
  then the local replica), first merged (``merge``: each block changed above the
  generation from the replica whose record of it is newest), is marked current at the
  starting generation and stays RW; the others are rebuilt from it (the rebuild's verify
  copies again every block that differs, whoever changed it).
- **The starting generation** (``starting_generation``): the newest the current replicas
  saw, so that none of them refuses the engine's numbers.
- **The manager's record** (``meets``): the newest (epoch, generation) the manager saw an
  engine report; a start from older replicas would lose acknowledged writes and is refused
  (``replica_link.stale_start``). One shortfall is accepted (``shortfall_accepted``): when
  every replica of the volume answered and every current one lost power, no newer data
  exists anywhere — the writes above the last FLUSH were lost with the machines' page
  caches, which a block device is allowed to lose (only a FLUSH promises durability).
"""

from __future__ import annotations

from cargohold import lineage
from cargohold.engine.replica_link import ReplicaLink


def current(reachable: list[ReplicaLink]) -> tuple[tuple[int, int], list[ReplicaLink]]:
    """-> (the newest (last epoch, generation) among ``reachable``, the replicas at it)."""
    top = max(lineage.rank(link.history, link.generation) for link in reachable)
    return top, [x for x in reachable if lineage.rank(x.history, x.generation) == top]


def in_doubt(link: ReplicaLink) -> bool:
    """Whether the replica may hold mutations above its generation that others lack."""
    return link.power_loss or link.seen > link.generation


def doubt(current: list[ReplicaLink]) -> bool:
    """Whether the current replicas may differ above their generation (module doc)."""
    return any(in_doubt(link) for link in current)


def sources(current: list[ReplicaLink]) -> list[ReplicaLink]:
    """The current replicas in the order to try them as the one source: the one that saw
    the newest mutation first, then one not in doubt, then the local one (ties: the given
    order). Seen first: an acknowledged write above the current generation was answered by
    every replica left in the write set, so a replica that lacks it either never saw it (its
    ``seen`` is below it) or was dropped for it; one not in doubt at a lower ``seen`` may be
    exactly the replica that failed it, and choosing it would lose the write."""
    return sorted(current, key=lambda x: (x.seen, not in_doubt(x), x.spec.local), reverse=True)


def starting_generation(current: list[ReplicaLink], floor: int = 0) -> int:
    """The last generation handed out when the engine starts: the newest any current
    replica saw (numbered on past a stale one's, a fork's, every current one would see a
    gap at the first write), and at least ``floor`` (the manager's record, when a shortfall
    against it is accepted: its numbers are spent, the next engine must not fall below)."""
    return max([floor, *(link.seen for link in current)])


def meets(require: tuple[int, int], top: tuple[int, int]) -> bool:
    """Whether the newest replica (``top``: last epoch, generation) holds everything the
    manager recorded (``require``; epoch 0: only the generation is known, compared alone)."""
    need_epoch, need_gen = require
    return top >= require if need_epoch else top[1] >= need_gen


def shortfall_accepted(links: list[ReplicaLink], current: list[ReplicaLink]) -> bool:
    """Whether a start below the manager's record may go on: every replica of the volume
    answered OPEN, and every current one lost power (module doc). A replica that did not
    answer may hold the newer data: then never."""
    answered = all(link.client is not None for link in links)
    return answered and bool(current) and all(link.power_loss for link in current)


def accepted_loss(
    volume: str, require: tuple[int, int], top: tuple[int, int], generation: int
) -> str:
    """The warning of a start below the manager's record (``shortfall_accepted``)."""
    return (
        f"volume {volume}: every replica answered and every current one lost power: "
        f"starting from epoch {top[0]}, generation {top[1]} although epoch {require[0]}, "
        f"generation {require[1]} was recorded: the mutations no replica kept (after its "
        f"last FLUSH) are lost; numbering goes on from generation {generation}"
    )
