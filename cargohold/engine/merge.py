"""The merge of a start in doubt: before the source is marked current (``doubt.
mark_source``), it gets every block changed above the generation G the current replicas
are all complete through from the current replica whose record of that block is newest
(``merge_plan``), so that an acknowledged write stored on some current replicas survives
even when the source is one that failed it. docs/reliability.md ("After a machine crash").

Each replica answers CHANGED with ``generations`` (its block maps only, no data read);
the copies go the way a rebuild's do: EXPORT since G from the replica that holds the
newest record, IMPORT into the source at that record's generation (an import never makes
a replica complete through anything: MARK_CURRENT does, after the merge).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from cargohold.constants import BLOCK_SIZE
from cargohold.engine import merge_plan
from cargohold.engine.replica_link import ReplicaLink
from cargohold.errors import CargoholdError, Unsupported
from cargohold.protocol import extent_stream as xs
from cargohold.protocol.replica_wire import GenerationRun

log = logging.getLogger("cargohold.engine")

CHUNK = 8 << 20  # bytes of data per EXPORT / IMPORT, as a rebuild's
WINDOW = 1 << 30  # bytes of volume per CHANGED: at most 131,072 runs (~4 MB of JSON) each


async def _runs(
    link: ReplicaLink, since: int, window: tuple[int, int], timeout: float
) -> list[GenerationRun]:
    assert link.client is not None
    return await asyncio.wait_for(link.client.changed_generations(since, *window), timeout)


async def merge_into(
    volume: str, source: ReplicaLink, others: Sequence[ReplicaLink], since: int, timeout: float
) -> int:
    """Give ``source`` the newest record of every block changed above ``since`` on any of
    ``source`` and ``others`` (in ``start_policy.sources`` order). -> blocks copied.
    The source's own errors propagate (it cannot be the source); another replica that
    cannot answer or export is left out with a warning (its blocks are not merged)."""
    assert source.client is not None
    peers = list(others)
    merged = 0
    for off in range(0, source.size, WINDOW):
        window = (off, min(WINDOW, source.size - off))
        try:
            mine = await _runs(source, since, window, timeout)
        except Unsupported as e:  # an older replica server: take the source whole, as before
            log.warning("volume %s: %s: no merge: %s", volume, source.spec, e)
            return 0
        asked = await asyncio.gather(
            *(_runs(x, since, window, timeout) for x in peers), return_exceptions=True
        )
        runs, answered = [mine], []
        for link, got in zip(peers, asked, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, CargoholdError | OSError | TimeoutError):
                    raise got
                log.warning("volume %s: %s left out of the merge: %s", volume, link.spec, got)
                continue
            answered.append(link)
            runs.append(got)
        peers = answered  # one left out stays out (its connection may be broken)
        merged += await _apply(volume, source, answered, merge_plan.plan(runs, 0), since, timeout)
    if merged:
        log.warning(
            "volume %s: merge: %d blocks changed above generation %d taken into %s from the "
            "replicas whose record of them is newest",
            *(volume, merged, since, source.spec),
        )
    return merged


async def _apply(
    volume: str,
    source: ReplicaLink,
    peers: list[ReplicaLink],
    copies: list[merge_plan.Copy],
    since: int,
    timeout: float,
) -> int:
    """Make the copies into ``source`` (``peers[i - 1]`` is the plan's replica i). -> blocks.
    A peer that cannot export a range is passed over (warned); the source's failure raises."""
    merged = 0
    for copy in copies:
        peer = peers[copy.source - 1]
        try:
            await _copy(peer, source, copy, since, timeout)
        except (CargoholdError, OSError, TimeoutError) as e:
            if isinstance(e, _ImportFailed):
                raise
            log.warning(
                "volume %s: merge: %s could not give bytes %d-%d: %s",
                *(volume, peer.spec, copy.offset, copy.offset + copy.length, e),
            )
            continue
        merged += copy.length // BLOCK_SIZE
    return merged


class _ImportFailed(CargoholdError):
    """The source could not take a merged range (it cannot be the source)."""


async def _copy(
    peer: ReplicaLink, source: ReplicaLink, copy: merge_plan.Copy, since: int, timeout: float
) -> None:
    """EXPORT since ``since`` from ``peer``, IMPORT into ``source`` at the copy's generation,
    chunk by chunk (an export chunk ends where its header says)."""
    assert peer.client is not None and source.client is not None
    off, end = copy.offset, copy.offset + copy.length
    while off < end:
        blob = await asyncio.wait_for(
            peer.client.export(off, end - off, since=since, max_bytes=CHUNK), timeout
        )
        header, _ = xs.decode(blob)
        try:
            await asyncio.wait_for(source.client.import_stream(blob, copy.generation), timeout)
        except (CargoholdError, OSError, TimeoutError) as e:
            raise _ImportFailed(f"import into the source failed: {e}") from e
        off = header.end
