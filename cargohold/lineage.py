"""Replica lineage: what a replica's persisted epoch history says about its data.

Pure functions, shared by the engine (which replica is current, where a delta rebuild may
start) and the manager (which orphaned replicas to adopt after a lost state store), so the
rule is written once.

A replica's history is ``[[epoch, first generation], ...]``: the epochs of the engines that
made its mutations, each with the generation of the first mutation it made, both strictly
increasing (``store.base.check_history`` checks the shape). ``generation`` is "complete
through" and ``seen`` the newest mutation it holds. Replicas are compared like Raft's
(term, index): the epoch of the newest mutation first, then the generation — never
timestamps or file sizes (invariant 4).
"""

from __future__ import annotations

from collections.abc import Sequence

History = Sequence[Sequence[int]]


def last_epoch(history: History) -> int:
    """The epoch of the engine that made the replica's newest mutation (0: none)."""
    return int(history[-1][0]) if history else 0


def rank(history: History, generation: int) -> tuple[int, int]:
    """The order of replicas by how new their data is: (last epoch, generation)."""
    return (last_epoch(history), generation)


def contained(target: History, target_seen: int, source: History, source_seen: int) -> bool:
    """Whether every mutation ``target`` holds was made on ``source``'s line too.

    True when the target's history is a prefix of the source's: the same epochs, and in its
    last epoch no mutation beyond what the source's engine of that epoch made. A replica
    that an older engine kept writing after the others had lost it holds mutations nobody
    else has: a fork, which generations alone cannot show and histories can. An empty
    replica (nothing seen) is contained in every line.
    """
    if target_seen == 0:
        return True
    t = [list(x) for x in target]
    s = [list(x) for x in source]
    n = len(t)
    if n == 0 or n > len(s) or t[: n - 1] != s[: n - 1]:
        return False
    epoch, first = t[-1]
    if s[n - 1][0] != epoch or first < s[n - 1][1]:
        return False
    end = s[n][1] - 1 if n < len(s) else source_seen  # the source's last mutation of that epoch
    return target_seen <= end
