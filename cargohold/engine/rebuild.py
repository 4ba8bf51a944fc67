"""Online rebuild of one replica from a current one. Called by ``volume``.

The replica to rebuild is in the write set (WO) from the start: it takes every live
mutation while history is copied to it, and serves no reads. History is what changed on a
current replica after the stale replica's own generation (0 for a new or emptied replica:
everything), copied as extent streams (EXPORT on the source, IMPORT on the target).

Copying goes in windows of the volume. While a window is copied, new mutations that touch
it wait: otherwise a write sent to both replicas after the source's EXPORT but before the
target's IMPORT would be overwritten on the target by the older exported data. Writes sent
before the window was taken are safe: each replica applies its requests in order, so the
source exports them and the target applies them before the import.

At the end, mutations are held for a moment, the target is flushed and marked current at
the engine's generation (MARK_CURRENT), and it becomes RW.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import ReplicaIOError
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient

if TYPE_CHECKING:
    from cargohold.engine.volume import Volume

log = logging.getLogger("cargohold.engine")

CHUNK_BYTES = 4 << 20  # data per EXPORT/IMPORT round trip


async def rebuild(vol: Volume, link: ReplicaLink) -> None:
    assert link.client is not None
    target = link.client
    since = link.generation
    if since == 0 and link.seen > 0:
        # a full copy onto a replica holding old data: clear it first, before it takes writes
        link.mode = Mode.ERR
        await target.trim(0, vol.size)
        link.mode = Mode.WO
    t0 = time.monotonic()
    link.rebuild = {
        "since": since,
        "copied_bytes": 0,
        "done_bytes": 0,
        "total_bytes": vol.size,
        "started": time.time(),
    }
    log.info("volume %s: rebuilding %s from generation %d", vol.name, link.spec, since)
    off = 0
    window = vol.settings.rebuild_window
    while off < vol.size:
        source = _source(vol)
        hi = min(vol.size, off + window)
        vol.window(off, hi)
        try:
            pos = off
            while pos < hi:
                blob = await asyncio.wait_for(
                    source.export(pos, hi - pos, since=since, max_bytes=CHUNK_BYTES),
                    vol.settings.replica_timeout * 4,
                )
                header, extents = xs.decode(blob)
                if extents:
                    await asyncio.wait_for(
                        target.import_stream(blob), vol.settings.replica_timeout * 4
                    )
                link.rebuild["copied_bytes"] += len(blob)
                pos = header.end
                link.rebuild["done_bytes"] = pos
                await _throttle(vol, link, t0)
        finally:
            vol.window_done()
        off = hi
        if link.mode is Mode.ERR:
            raise ReplicaIOError(f"replica {link.spec} failed during its rebuild: {link.error}")
    # the end: hold mutations, make the target durable and current, resume
    await vol._hold()
    try:
        if link.mode is Mode.ERR:
            raise ReplicaIOError(f"replica {link.spec} failed during its rebuild: {link.error}")
        await asyncio.wait_for(target.flush(), vol.settings.replica_timeout * 4)
        gen = await asyncio.wait_for(target.mark_current(vol.gen), vol.settings.replica_timeout * 4)
        link.generation = gen
        link.mode = Mode.RW
    finally:
        vol._release()
    took = time.monotonic() - t0
    link.rebuild.update(finished=time.time(), seconds=round(took, 3))
    vol.counters["rebuilds"] += 1
    vol.counters["rebuild_bytes"] += link.rebuild["copied_bytes"]
    log.info(
        "volume %s: %s rebuilt: %d bytes copied in %.2f s, current at generation %d",
        vol.name,
        link.spec,
        link.rebuild["copied_bytes"],
        took,
        link.generation,
    )


def _source(vol: Volume) -> ReplicaClient:
    for candidate in vol._readers():
        if candidate.client is not None:
            return candidate.client
    raise ReplicaIOError(f"volume {vol.name}: no current replica to rebuild from")


async def _throttle(vol: Volume, link: ReplicaLink, t0: float) -> None:
    """Keep the copy rate at or under the setting (0 = unlimited): sleep the difference."""
    rate = vol.settings.rebuild_bandwidth
    if rate:
        ahead = link.rebuild["copied_bytes"] / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    else:
        await asyncio.sleep(0)
