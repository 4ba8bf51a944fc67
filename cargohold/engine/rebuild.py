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

A block that fails its check on the source (a block a power loss left *lost*, or rot) made
its EXPORT fail, and the rebuild with it, for ever (``LostBlocks``; docs/reliability.md,
"A lost block on a rebuild's source"). Now the blocks of the failing range that fail a read
on the source are looked at one by one, against the target's copy: one that verifies on
the target and matches the source's own record of the block (its checksum) repairs the
source (REPAIR, which takes nothing else); one that fails on the target too is left failing
on both, skipped by the copy and the verify, and reported. A target copy that verifies but
is another value is taken into the source (IMPORT) only when both replicas lost power, the
target was as complete as the source was at its OPEN, and nothing changed the block on the
source since (both values are then leftovers of the crash, either one a value the volume
may hold); otherwise which is right cannot be told and the rebuild fails naming the block.
No value is ever made up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cargohold import lineage
from cargohold.constants import BLOCK_SIZE
from cargohold.engine import compare
from cargohold.engine.background import ForegroundYield
from cargohold.engine.interface import VolumeCore
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import ChecksumError, ReplicaIOError
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient

if TYPE_CHECKING:  # numpy is imported where it is used (compare.py)
    import numpy as np

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
    lost = LostBlocks(leftovers=_leftovers(vol, source, link, full))
    link.rebuild.update(source_repaired_blocks=0, unreadable_blocks=0)
    await _copy(vol, link, target, since, timeout, t0, lost)
    await _verify(vol, link, target, timeout, lost)
    lost.report(vol, link)
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
    vol: VolumeCore,
    link: ReplicaLink,
    target: ReplicaClient,
    since: int,
    timeout: float,
    t0: float,
    lost: LostBlocks,
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
        blob = await _export(vol, target, pos, since, timeout, lost)
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
                    nxt = asyncio.ensure_future(_export(vol, target, end, since, timeout, lost))
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
                following = await _export(vol, target, pos, since, timeout, lost)
            else:  # the next chunk was exported already: its range stays held
                vol.window(pos, min(vol.size, pos + step))
                await asyncio.sleep(0)  # let the writes just released through
            blob = following
    finally:
        vol.window_done()


async def _verify(
    vol: VolumeCore, link: ReplicaLink, target: ReplicaClient, timeout: float, lost: LostBlocks
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
                blocks = lost.readable(blocks)  # failing on both: left so, reported
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
                try:
                    sent = await compare.recopy(source, target, blocks, timeout)
                except ChecksumError:  # a block failing on the source: look, then again
                    for lba, count in compare.block_runs(blocks):
                        await lost.resolve(source, target, lba, count, timeout)
                    continue
                link.rebuild["recopied_bytes"] += sent
                vol.counters["rebuild_recopied_bytes"] += sent
        finally:
            vol.window_done()
        link.rebuild["verified_bytes"] = off + length
        await asyncio.sleep(0)  # let the writes held for the window through
    link.rebuild["verify_seconds"] = round(time.monotonic() - t0, 3)


async def _export(
    vol: VolumeCore, target: ReplicaClient, pos: int, since: int, timeout: float, lost: LostBlocks
) -> memoryview:
    """The source's EXPORT of the next chunk from ``pos``; around the blocks that fail on
    the source and the target (an empty chunk over such a block: the target keeps its own,
    failing, copy). A range whose EXPORT fails its check is looked at block by block
    (``LostBlocks.resolve``) and exported again."""
    source = _source(vol)
    hi = min(vol.size, pos + vol.settings.rebuild_window)
    idle = 0
    while True:
        first = pos // BLOCK_SIZE
        skip = lost.next_unreadable(first, hi // BLOCK_SIZE)
        if skip == first:
            header = xs.StreamHeader(pos, pos + BLOCK_SIZE, since, 0)
            return memoryview(b"".join(bytes(b) for b in xs.encode(header, [])))
        end = hi if skip is None else skip * BLOCK_SIZE
        try:
            return await asyncio.wait_for(
                source.export(pos, end - pos, since=since, max_bytes=CHUNK_BYTES), timeout
            )
        except ChecksumError:
            if not await lost.resolve(source, target, first, (end - pos) // BLOCK_SIZE, timeout):
                idle += 1  # another rebuild from this source may have taken it meanwhile
                if idle > 2:
                    raise


@dataclass
class LostBlocks:
    """What one rebuild found about blocks that fail their check on its source (module
    doc): those repaired on the source from the target, those failing on both."""

    # when both lost power and the target is as complete as the source was at its OPEN:
    # the source's seen then (blocks it did not change since are crash leftovers, and the
    # target's copy of one is a value the volume may hold); None otherwise
    leftovers: int | None = None
    taken: int = 0
    taken_other: int = 0  # of those, another value than the source's record named
    unreadable: set[int] = field(default_factory=set)

    def next_unreadable(self, lo: int, hi: int) -> int | None:
        """The first block in [lo, hi) that fails on the source and the target."""
        inside = [b for b in self.unreadable if lo <= b < hi]
        return min(inside) if inside else None

    def readable(self, blocks: np.ndarray) -> np.ndarray:
        """``blocks`` (a numpy array) without those failing on both."""
        if not self.unreadable or blocks.size == 0:
            return blocks
        import numpy as np

        return blocks[~np.isin(blocks, sorted(self.unreadable))]

    async def resolve(
        self, source: ReplicaClient, target: ReplicaClient, lba: int, count: int, timeout: float
    ) -> bool:
        """The source failed its check somewhere in blocks [lba, lba + count): find the
        blocks (its SCRUB names the bad copies of every layer; a READ of each tells the
        ones the head reads) and repair each from the target's copy, or note it failing on
        both; raise if the target holds another value. -> whether a block was found."""
        report = await asyncio.wait_for(source.scrub(lba * BLOCK_SIZE, count * BLOCK_SIZE), timeout)
        found = sorted({int(b["block"]) for b in report.get("bad", [])} - self.unreadable)
        progress = False
        for b in found:
            if not lba <= b < lba + count:
                continue
            if await _reads(source, b, timeout):
                continue  # a bad copy in a layer the head does not read through to (or fixed)
            try:
                data = bytes(
                    await asyncio.wait_for(target.read(b * BLOCK_SIZE, BLOCK_SIZE), timeout)
                )
            except ChecksumError:
                self.unreadable.add(b)
                progress = True
                log.error(
                    "block %d fails its check on the rebuild's source %s and on its target "
                    "%s: no replica vouches for it; it stays failing on both",
                    b,
                    source.where,
                    target.where,
                )
                continue
            fixed = await asyncio.wait_for(source.repair(b * BLOCK_SIZE, data), timeout)
            progress = True
            if fixed:
                self.taken += 1
                log.warning(
                    "block %d failed its check on the rebuild's source %s: repaired from the "
                    "target's copy (it verifies there and matches the source's record)",
                    b,
                    source.where,
                )
            elif await _reads(source, b, timeout):  # repaired by another rebuild meanwhile
                pass
            elif await self._leftover(source, b, timeout):
                await asyncio.wait_for(source.import_stream(_one_block(b, data)), timeout)
                self.taken += 1
                self.taken_other += 1
                log.warning(
                    "block %d failed its check on the rebuild's source %s after a power loss "
                    "of both: the target's copy (it verifies there; another value than the "
                    "source's record, both crash leftovers) was taken into the source",
                    b,
                    source.where,
                )
            else:
                raise ReplicaIOError(
                    f"block {b} fails its check on the rebuild's source {source.where}, and "
                    f"the target's copy (it verifies there) is not the value the source's "
                    f"record names: neither can be vouched for, the rebuild cannot go on"
                )
        return progress

    async def _leftover(self, source: ReplicaClient, block: int, timeout: float) -> bool:
        """Whether the source's ``block`` is a crash leftover whose value the target's copy
        may replace: both lost power, the target was as complete as the source at its OPEN
        (``leftovers``), and nothing changed the block on the source since."""
        if self.leftovers is None:
            return False
        changed = await asyncio.wait_for(
            source.changed_since(self.leftovers, block * BLOCK_SIZE, BLOCK_SIZE), timeout
        )
        return not changed

    def report(self, vol: VolumeCore, link: ReplicaLink) -> None:
        """Into the replica's rebuild status and the volume's counters (docs/engine.md)."""
        link.rebuild.update(
            source_repaired_blocks=self.taken, unreadable_blocks=len(self.unreadable)
        )
        vol.counters["rebuild_source_repaired_blocks"] += self.taken
        link.rebuild["source_taken_other_blocks"] = self.taken_other
        vol.counters["rebuild_unreadable_blocks"] += len(self.unreadable)
        if self.unreadable:
            link.rebuild["unreadable"] = sorted(self.unreadable)[:16]


def _leftovers(vol: VolumeCore, source: ReplicaClient, link: ReplicaLink, full: bool) -> int | None:
    """``LostBlocks.leftovers`` for a rebuild of ``link`` from ``source``: the source's seen
    at its OPEN when the source and the target both lost power and the target was complete
    through at least what the source was at its OPEN (a replica current when a start in
    doubt chose the source; not one that was behind, nor a full copy); else None."""
    src = next((x for x in vol.readers() if x.client is source), None)
    if full or src is None or not (src.opened_power_loss and link.power_loss):
        return None
    return src.opened_seen if link.generation >= src.opened_generation else None


def _one_block(lba: int, data: bytes) -> bytes:
    """An extent stream of one DATA block (IMPORTed: history, not a mutation)."""
    import struct

    import crc32c

    crc = struct.pack("<I", crc32c.crc32c(data))
    header = xs.StreamHeader(lba * BLOCK_SIZE, (lba + 1) * BLOCK_SIZE, 0, 0)
    ext = xs.Extent(xs.KIND_DATA, lba, 1, memoryview(data), memoryview(crc))
    return b"".join(bytes(b) for b in xs.encode(header, [ext]))


async def _reads(client: ReplicaClient, block: int, timeout: float) -> bool:
    """Whether ``block`` reads (verifies) on that replica."""
    try:
        await asyncio.wait_for(client.read(block * BLOCK_SIZE, BLOCK_SIZE), timeout)
        return True
    except ChecksumError:
        return False


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
