"""The one source of a start in doubt: when the current replicas may differ above their
generation (``start_policy.doubt``: a power loss, or a write that failed after taking its
number), one of them is marked current at the engine's starting generation with its own
history (MARK_CURRENT, durable when answered) and stays RW; the others are WO, rebuilt
from it by the volume. Called by ``volume.Volume.start`` before any I/O is served.
"""

from __future__ import annotations

import asyncio
import logging

from cargohold.engine import start_policy as policy
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import CargoholdError, ReplicaIOError

log = logging.getLogger("cargohold.engine")


async def mark_source(
    volume: str, current: list[ReplicaLink], generation: int, timeout: float
) -> ReplicaLink:
    """Make one of ``current`` (tried in ``policy.sources`` order) the RW source, marked
    current at ``generation``, and the others WO. One whose MARK_CURRENT fails is dropped
    (ERR) and the next tried. -> the source; ReplicaIOError if none could be marked."""
    for link in current:
        link.mode = Mode.WO
    below = min(x.generation for x in current)
    for link in policy.sources(current):
        assert link.client is not None
        try:
            gen = await asyncio.wait_for(
                link.client.mark_current(generation, link.history), timeout
            )
        except (CargoholdError, OSError, TimeoutError) as e:
            why = str(e) if isinstance(e, CargoholdError) and str(e) else f"{type(e).__name__}: {e}"
            link.drop(f"marking it current failed: {why}")
            log.warning("volume %s: %s: %s", volume, link.spec, link.error)
            continue
        link.generation = link.seen = gen
        link.power_loss = False  # the replica cleared its flag too
        link.mode = Mode.RW
        log.warning(
            "volume %s: the current replicas may differ above generation %d (a power loss, "
            "or a write that failed after taking its number): %s is the source, marked "
            "current at %d; the others are rebuilt from it",
            volume,
            below,
            link.spec,
            gen,
        )
        return link
    why = "; ".join(f"{x.spec}: {x.error}" for x in current)
    raise ReplicaIOError(
        f"volume {volume}: the current replicas may differ and none of the current replicas "
        f"could be marked current as the source ({why})"
    )
