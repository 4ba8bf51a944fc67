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

Before the target may become current it is verified (invariant 8): window by window, with
mutations to the window held, its checksum map is compared with the source's (``compare``:
no data read). Blocks that differ — whatever wrote them: a write that bypassed the engine,
an edit of its files, a bug — are copied again and compared again; if they still differ
after ``VERIFY_ROUNDS`` copies the rebuild fails and the replica stays out (ERR). What was
found is counted (``rebuild.diverged_blocks`` in the replica's status, the volume counters
``rebuild_diverged_blocks`` and ``rebuild_recopied_bytes``).

At the end, mutations are held for a moment, the target is flushed and marked current at
the engine's generation (MARK_CURRENT), and it becomes RW.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cargohold import lineage
from cargohold.constants import BLOCK_SIZE
from cargohold.engine import compare
from cargohold.engine.background import ForegroundYield
from cargohold.engine.interface import VolumeCore
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import ReplicaIOError
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient

log = logging.getLogger("cargohold.engine")

CHUNK_BYTES = 4 << 20  # data per EXPORT/IMPORT round trip
VERIFY_ROUNDS = 3  # copies of blocks that differ after the rebuild before it gives up


def delta_start(
    target: ReplicaLink, source_history: list[list[int]], source_seen: int
) -> int | None:
    """Where a delta rebuild of ``target`` from a source must start, or None if only a full
    copy is safe.

    A delta from the target's generation is right only if every mutation it holds is on the
    source's line (``lineage.contained``): a replica that an older engine kept writing after
    the others lost it holds mutations nobody else has (a fork); generations alone cannot
    show that, histories can.
    """
    if target.seen == 0:
        return 0  # empty: a full copy, nothing to clear
    if not lineage.contained(target.history, target.seen, source_history, source_seen):
        return None
    return target.generation


async def rebuild(vol: VolumeCore, link: ReplicaLink) -> None:
    assert link.client is not None
    target = link.client
    t0 = time.monotonic()
    link.rebuild = {
        "since": None,
        "full": None,
        "copied_bytes": 0,
        "done_bytes": 0,
        "total_bytes": vol.size,
        "started": time.time(),
    }
    source = _source(vol)
    info = await asyncio.wait_for(source.info(), vol.settings.replica_timeout)
    since = delta_start(link, info.get("history", []), info.get("seen", info["generation"]))
    full = since is None
    if since is None:
        # a fork or an unknown past: clear it and copy everything, before it takes writes
        mode, link.mode = link.mode, Mode.ERR
        seen = (await asyncio.wait_for(target.info(), vol.settings.replica_timeout))["seen"]
        await target.trim(0, vol.size, generation=seen + 1)  # numbered: the replica never is
        link.mode = mode
        since = 0
    link.rebuild.update(since=since, full=full or since == 0)
    log.info(
        "volume %s: rebuilding %s from generation %d%s",
        vol.name,
        link.spec,
        since,
        " (full: its history is not the source's)" if full else "",
    )
    timeout = vol.settings.replica_timeout * 4
    await _copy(vol, link, target, since, timeout, t0)
    await _verify(vol, link, target, timeout)
    # the end: hold mutations, make the target durable and current, resume
    async with vol.hold():
        if link.mode is Mode.ERR:
            raise ReplicaIOError(f"replica {link.spec} failed during its rebuild: {link.error}")
        history = (await asyncio.wait_for(_source(vol).info(), timeout)).get("history", [])
        await asyncio.wait_for(target.flush(), timeout)
        # after a full rebuild the target's own past (a fork's generations) is void
        gen = await asyncio.wait_for(
            target.mark_current(vol.gen, history, reset=bool(full)), timeout
        )
        link.generation = gen
        link.seen = gen
        link.history = history
        link.power_loss = False  # MARK_CURRENT cleared the replica's flag
        link.mode = Mode.RW
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


async def _copy(
    vol: VolumeCore, link: ReplicaLink, target: ReplicaClient, since: int, timeout: float, t0: float
) -> None:
    """Copy what changed since ``since`` from a current replica to ``target``, chunk by
    chunk. Unthrottled, the copy is pipelined: the source exports chunk k+1 while the target
    imports chunk k, and the window of held writes covers both (from the start of the chunk
    being imported to the end of the range being exported). Either way the window over a
    range is taken before its EXPORT is sent and given back after its IMPORT is answered,
    so no write reaches either replica in between (module doc). Throttled, chunks go one at
    a time and the sleep happens outside any window.

    Either way the copy yields to the consumer (engine/background.py): throttled, after
    every chunk; pipelined, whenever the consumer did I/O since the last chunk — then the
    next chunk is not exported ahead, the window is given back, and the copy waits while
    the consumer keeps going (up to ``background_yield_max``) before it takes the next
    window. An idle volume's rebuild stays pipelined at full speed."""
    step = vol.settings.rebuild_window
    pipelined = not vol.settings.rebuild_bandwidth
    courtesy = ForegroundYield(vol.counters, most=vol.settings.background_yield_max)
    link.rebuild.update(yields=0, yielded_seconds=0.0)
    pos = 0  # the start of the chunk in hand
    vol.window(pos, min(vol.size, pos + step))
    try:
        blob = await _export(vol, pos, since, timeout)
        while True:
            header, extents = xs.decode(blob)
            end = header.end
            importing = (
                asyncio.ensure_future(asyncio.wait_for(target.import_stream(blob), timeout))
                if extents
                else None
            )
            nxt = None
            try:
                if pipelined and end < vol.size and not courtesy.busy():  # next one meanwhile
                    vol.window(pos, min(vol.size, end + step))
                    nxt = asyncio.ensure_future(_export(vol, end, since, timeout))
                if importing is not None:
                    await importing
                following = await nxt if nxt is not None else None
            except BaseException:
                for f in (importing, nxt):
                    if f is not None and not f.done():
                        f.cancel()
                raise
            link.rebuild["copied_bytes"] += len(blob)
            link.rebuild["done_bytes"] = end
            if link.mode is Mode.ERR:
                raise ReplicaIOError(f"replica {link.spec} failed during its rebuild: {link.error}")
            pos = end
            vol.window_done()  # the chunk in hand is in: writes to it may go
            if not pipelined:  # throttled: sleep with no window held (the last chunk too,
                await _throttle(vol, link, t0)  # so the whole copy keeps to the rate)
            if following is None and pos < vol.size:  # no window held: the consumer first
                await courtesy.pause()  # (engine/background.py)
                link.rebuild.update(
                    yields=courtesy.yields, yielded_seconds=round(courtesy.waited, 3)
                )
            if pos >= vol.size:
                return
            if following is None:
                vol.window(pos, min(vol.size, pos + step))
                following = await _export(vol, pos, since, timeout)
            else:  # the next chunk was exported already: its range stays held
                vol.window(pos, min(vol.size, pos + step))
                await asyncio.sleep(0)  # let the writes just released through
            blob = following
    finally:
        vol.window_done()


async def _verify(
    vol: VolumeCore, link: ReplicaLink, target: ReplicaClient, timeout: float
) -> None:
    """Compare the target's checksum map with the source's over the whole volume; copy
    what differs again, up to VERIFY_ROUNDS times per range (module doc)."""
    link.rebuild.update(diverged_blocks=0, recopied_bytes=0, verified_bytes=0)
    t0 = time.monotonic()
    for off, length in compare.ranges(vol.size):
        vol.window(off, off + length)
        try:
            for attempt in range(VERIFY_ROUNDS + 1):
                if link.mode is Mode.ERR:
                    raise ReplicaIOError(
                        f"replica {link.spec} failed during its rebuild: {link.error}"
                    )
                source = _source(vol)
                blocks, _ = await compare.differing([source, target], off, length, timeout)
                if blocks.size == 0:
                    break
                first = int(blocks[0])
                if attempt == VERIFY_ROUNDS:
                    raise ReplicaIOError(
                        f"replica {link.spec}: {blocks.size} block(s) still differ from the "
                        f"source after {VERIFY_ROUNDS} copies (first: block {first}, offset "
                        f"{first * BLOCK_SIZE}); it stays out of the write set"
                    )
                if attempt == 0:
                    link.rebuild["diverged_blocks"] += int(blocks.size)
                    vol.counters["rebuild_diverged_blocks"] += int(blocks.size)
                log.warning(
                    "volume %s: %s differs from its source after the rebuild in %d block(s) "
                    "(first: block %d); copying them again (round %d of %d)",
                    vol.name,
                    link.spec,
                    blocks.size,
                    first,
                    attempt + 1,
                    VERIFY_ROUNDS,
                )
                sent = await compare.recopy(source, target, blocks, timeout)
                link.rebuild["recopied_bytes"] += sent
                vol.counters["rebuild_recopied_bytes"] += sent
        finally:
            vol.window_done()
        link.rebuild["verified_bytes"] = off + length
        await asyncio.sleep(0)  # let the writes held for the window through
    link.rebuild["verify_seconds"] = round(time.monotonic() - t0, 3)


async def _export(vol: VolumeCore, pos: int, since: int, timeout: float) -> memoryview:
    source = _source(vol)
    hi = min(vol.size, pos + vol.settings.rebuild_window)
    return await asyncio.wait_for(
        source.export(pos, hi - pos, since=since, max_bytes=CHUNK_BYTES), timeout
    )


def _source(vol: VolumeCore) -> ReplicaClient:
    for candidate in vol.readers():
        if candidate.client is not None:
            return candidate.client
    raise ReplicaIOError(f"volume {vol.name}: no current replica to rebuild from")


async def _throttle(vol: VolumeCore, link: ReplicaLink, t0: float) -> None:
    """Keep the copy rate at or under the setting (0 = unlimited): sleep the difference."""
    rate = vol.settings.rebuild_bandwidth
    if rate:
        ahead = link.rebuild["copied_bytes"] / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    else:
        await asyncio.sleep(0)
