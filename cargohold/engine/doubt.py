"""The one source of a start in doubt: when the current replicas may differ above their
generation (``start_policy.doubt``: a power loss, or a write that failed after taking its
number), one of them first gets, block by block, the newest record any current replica
holds of what changed above that generation (``merge``), then is marked current at the
engine's starting generation with its own history (MARK_CURRENT, durable when answered)
and stays RW; the others are WO, rebuilt from it by the volume. Called by
``volume.Volume.start`` before any I/O is served.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from cargohold.engine import start_policy as policy
from cargohold.engine.merge import merge_into
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import CargoholdError, ReplicaIOError

log = logging.getLogger("cargohold.engine")


async def mark_source(
    volume: str,
    current: list[ReplicaLink],
    generation: int,
    timeout: float,
    counters: collections.Counter[str] | None = None,
) -> ReplicaLink:
    """Make one of ``current`` (tried in ``policy.sources`` order) the RW source: merged
    (``merge.merge_into``: the blocks it copied are counted in ``merged_blocks``), marked
    current at ``generation``; the others WO. One whose merge or MARK_CURRENT fails is
    dropped (ERR) and the next tried. -> the source; ReplicaIOError if none could be."""
    for link in current:
        link.mode = Mode.WO
    below = min(x.generation for x in current)
    order = policy.sources(current)
    for link in order:
        assert link.client is not None
        others = [x for x in order if x is not link and x.client is not None]
        step = "merging into it"
        try:
            merged = await merge_into(volume, link, others, below, timeout)
            step = "marking it current"
            gen = await asyncio.wait_for(
                link.client.mark_current(generation, link.history), timeout
            )
        except (CargoholdError, OSError, TimeoutError) as e:
            why = str(e) if isinstance(e, CargoholdError) and str(e) else f"{type(e).__name__}: {e}"
            link.drop(f"{step} failed: {why}")
            log.warning("volume %s: %s: %s", volume, link.spec, link.error)
            continue
        link.generation = link.seen = gen
        link.power_loss = False  # the replica cleared its flag too
        link.mode = Mode.RW
        if counters is not None:
            counters["merged_blocks"] += merged
        log.warning(
            "volume %s: the current replicas may differ above generation %d (a power loss, "
            "or a write that failed after taking its number): %s is the source, given %d "
            "newer blocks by the merge, marked current at %d; the others are rebuilt from it",
            *(volume, below, link.spec, merged, gen),
        )
        return link
    why = "; ".join(f"{x.spec}: {x.error}" for x in current)
    raise ReplicaIOError(
        f"volume {volume}: the current replicas may differ and none of the current replicas "
        f"could be marked current as the source ({why})"
    )
