"""The RESTORE operation: write a backup into this (new) volume through its ordinary
replicated write path, then check it. Called by ``control`` (the control op ``restore``,
which the node agent sends for the manager's RESTORE operation).

The backup is read in offset order (``BackupReader.read_all``: every chunk authenticated
and checked, a bad one raises ChecksumError naming the chunk and its object) and written in
big batches (``BATCH`` bytes of writes in flight), like a clone's import
(``importer``): every replica of the volume is built from the stream at once. Unless the
volume is fresh (a re-run after an engine died mid-restore), what the backup holds as zeros
is zeroed too. After each batch, every current replica's checksum map of the batch's range
(CHECKSUMS, no data read) is compared with the CRC32C of the backup's data: a replica that
does not hold exactly what the backup says fails the restore, naming the block. The volume
stays "restoring" in the manager until the operation succeeded.

With ``base`` (a standby volume's next apply, docs/disaster-recovery.md), the volume holds
backup ``base`` already: the two backups' chunk maps are compared (``chunk_map.delta``, no
data read) and only the blocks that differ are fetched and written (or zeroed), then checked
the same way. Writing the absolute content of every differing block makes a re-run after an
interrupted apply correct too (whatever part of the apply landed is overwritten).

Both are background work (engine/background.py): they keep to ``restore_bandwidth`` and,
while the volume's consumer does I/O (a standby's readers), yield to it after each batch;
the job shows ``yields`` and ``yielded_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cargohold.backup.chunk_map import delta
from cargohold.backup.reader import BackupReader
from cargohold.constants import BLOCK_SIZE
from cargohold.engine.background import Pace
from cargohold.engine.backup import new_job, open_repository
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.engine.volume import Volume, describe
from cargohold.errors import ChecksumError, InvalidArgument, ReplicaIOError
from cargohold.protocol import replica_wire as wire
from cargohold.store.base import ZERO_CRC, block_crcs, window_digests

log = logging.getLogger("cargohold.engine")

PIECE = 4 << 20  # bytes per piece read from the backup
BATCH = 32 << 20  # bytes of writes in flight, then checked
SPAN = 256 << 20  # most volume one batch covers (bounds its checksum map)
DIGEST_BLOCKS = 4096  # blocks per digest when checking runs of zeros (16 MiB)


async def start_restore(
    vol: Volume, op_id: str, args: Any, secrets: Mapping[str, Any]
) -> dict[str, Any]:
    vol.check_usable()
    if not isinstance(args, dict) or not isinstance(args.get("backup"), str) or not args["backup"]:
        raise InvalidArgument("restore: argument 'backup' (a backup id) is required")
    if not isinstance(secrets, Mapping):
        raise InvalidArgument("secrets must be an object")
    base = args.get("base")
    if base is not None and (not isinstance(base, str) or not base):
        raise InvalidArgument("restore: argument 'base' must be a backup id")
    job = new_job(vol, op_id, "restore", vol.size)
    vol.spawn(_run(vol, job, str(args["backup"]), dict(secrets), base))
    return dict(job)


async def _run(
    vol: Volume, job: dict[str, Any], backup: str, secrets: dict[str, Any], base: str | None
) -> None:
    try:
        if base:
            job["result"] = await apply_delta(vol, job, backup, base, secrets)
        else:
            job["result"] = await restore(vol, job, backup, secrets)
    except asyncio.CancelledError:
        job.update(state="failed", error="cancelled: the engine stopped")
        raise
    except Exception as e:
        job.update(state="failed", error=describe(e))
        log.warning("volume %s: restore of backup %s failed: %s", vol.name, backup, e)
    else:
        job.update(state="succeeded")
        log.info("volume %s: restored backup %s: %s", vol.name, backup, job["result"])


async def restore(
    vol: Volume, job: dict[str, Any], backup: str, secrets: dict[str, Any]
) -> dict[str, Any]:
    t0 = time.monotonic()
    repo = await asyncio.to_thread(open_repository, secrets)
    reader: BackupReader = await asyncio.to_thread(repo.restore_reader, backup)
    try:
        size = reader.info.size
        if size > vol.size:
            raise InvalidArgument(
                f"backup {backup} is of a {size}-byte volume; volume {vol.name} has {vol.size}"
            )
        job["bytes_total"] = size
        fresh = vol.gen == 0  # nothing written yet: zeros need no writes
        pace = Pace(vol.counters, vol.settings.restore_bandwidth, vol.settings.background_yield_max)
        pieces = reader.read_all(max_bytes=PIECE)
        data_bytes = 0
        pos = 0  # everything before it is written and checked
        batch: list[tuple[int, bytes]] = []
        held = bstart = 0
        while True:
            item = await asyncio.to_thread(_next, pieces)
            if batch and (
                item is None
                or held + len(item[1]) > BATCH
                or item[0] + len(item[1]) - bstart > SPAN
            ):
                pos, ops = await _write_batch(vol, bstart, batch, fresh)
                data_bytes += held
                job["bytes_done"] = pos
                await pace.chunk(held, ops)  # its cap, then the consumer first
                job.update(pace.status())
                batch, held = [], 0
            if item is None:
                break
            if not batch:
                await pace.chunk(0, await _zero_range(vol, pos, item[0], fresh))
                bstart = item[0]
            batch.append(item)
            held += len(item[1])
        await pace.chunk(0, await _zero_range(vol, pos, size, fresh))
        job["bytes_done"] = size
        await vol.flush()  # durable on every replica before it is "succeeded"
    finally:
        await asyncio.to_thread(reader.close)
    vol.counters["restored_bytes"] += data_bytes
    return {
        "backup": backup,
        "bytes_restored": size,
        "data_bytes": data_bytes,
        "seconds": round(time.monotonic() - t0, 3),
    }


async def apply_delta(
    vol: Volume, job: dict[str, Any], backup: str, base: str, secrets: dict[str, Any]
) -> dict[str, Any]:
    """Turn the volume (holding backup ``base``) into backup ``backup``: only what differs."""
    t0 = time.monotonic()
    repo = await asyncio.to_thread(open_repository, secrets)
    _, _, base_map = await asyncio.to_thread(repo.manifest, base)
    reader: BackupReader = await asyncio.to_thread(repo.restore_reader, backup)
    try:
        if reader.info.size > vol.size:
            raise InvalidArgument(
                f"backup {backup} is of a {reader.info.size}-byte volume; volume {vol.name} has "
                f"{vol.size} (expand the standby first)"
            )
        d = await asyncio.to_thread(delta, base_map, reader.map)
        reader.map = d.data  # fetch only the chunks of the blocks that differ
        job["bytes_total"] = d.changed_bytes
        done = 0
        batch: list[tuple[int, bytes]] = []
        held = 0
        pace = Pace(vol.counters, vol.settings.restore_bandwidth, vol.settings.background_yield_max)
        pieces = reader.read_all(max_bytes=PIECE)
        while True:
            item = await asyncio.to_thread(_next, pieces)
            if batch and (
                item is None
                or held + len(item[1]) > BATCH
                or item[0] + len(item[1]) - batch[0][0] > SPAN
            ):
                await _write_pieces(vol, batch)
                done += held
                job["bytes_done"] = done
                await pace.chunk(held, len(batch))  # its cap, then the consumer first
                job.update(pace.status())
                batch, held = [], 0
            if item is None:
                break
            batch.append(item)
            held += len(item[1])
        for off, length in d.zeros:
            await pace.chunk(0, await _zero_range(vol, off, off + length, False))
        job["bytes_done"] = d.changed_bytes
        await vol.flush()
        fetched = reader.bytes_fetched
    finally:
        await asyncio.to_thread(reader.close)
    vol.counters["restored_bytes"] += d.data_bytes
    return {
        "backup": backup,
        "base": base,
        "changed_bytes": d.changed_bytes,
        "data_bytes": d.data_bytes,
        "zeroed_bytes": d.changed_bytes - d.data_bytes,
        "fetched_bytes": fetched,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _next(it: Iterator[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    return next(it, None)


async def _write_batch(
    vol: Volume, start: int, batch: list[tuple[int, bytes]], fresh: bool
) -> tuple[int, int]:
    """Write the batch's data, zeros between (unless fresh); then compare every current
    replica's checksum map of the range with the data's CRC32C. -> (the range's end,
    requests sent)."""
    end = batch[-1][0] + len(batch[-1][1])
    writes = []
    want = np.full((end - start) // BLOCK_SIZE, ZERO_CRC, dtype="<u4")
    pos = start
    for off, data in batch:
        if not fresh and off > pos:
            writes.append(vol.write_zeroes(pos, off - pos, False))
        writes.append(vol.write(off, memoryview(data), False))
        a = (off - start) // BLOCK_SIZE
        want[a : a + len(data) // BLOCK_SIZE] = block_crcs(data)
        pos = off + len(data)
    results = await asyncio.gather(*writes, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    await _check(vol, start, end, want)
    return end, len(writes)


async def _write_pieces(vol: Volume, batch: list[tuple[int, bytes]]) -> None:
    """Write the pieces (nothing between them: unchanged), then check each piece's range."""
    results = await asyncio.gather(
        *(vol.write(off, memoryview(data), False) for off, data in batch), return_exceptions=True
    )
    for r in results:
        if isinstance(r, BaseException):
            raise r
    for off, data in batch:
        await _check(vol, off, off + len(data), block_crcs(data))


async def _zero_range(vol: Volume, start: int, end: int, fresh: bool) -> int:
    """What the backup holds as zeros: zeroed (unless fresh), then checked by window
    digests (a long run of zeros costs a few bytes per 16 MiB to check). -> requests sent."""
    step = wire.MAX_CHECKSUM_BLOCKS * BLOCK_SIZE
    ops = 0
    for lo in range(start, end, step):
        hi = min(end, lo + step)
        if not fresh:
            await vol.write_zeroes(lo, hi - lo, False)
            ops += 1
        n = (hi - lo) // BLOCK_SIZE
        want = window_digests(np.full(n, ZERO_CRC, dtype="<u4"), DIGEST_BLOCKS)
        for link, got in await _maps(vol, lo, hi, DIGEST_BLOCKS):
            bad = np.flatnonzero(got != want)
            if bad.size:
                first = lo + int(bad[0]) * DIGEST_BLOCKS * BLOCK_SIZE
                raise ChecksumError(
                    f"restore check: replica {link.spec.id} holds data where the backup has "
                    f"zeros, in the 16 MiB from offset {first}"
                )
    return ops


async def _maps(
    vol: Volume, lo: int, hi: int, digest_blocks: int = 0
) -> list[tuple[ReplicaLink, np.ndarray]]:
    links = [link for link in vol.links if link.mode is Mode.RW and link.client is not None]
    if not links:
        raise ReplicaIOError(f"volume {vol.name}: no current replica to check the restore on")
    timeout = vol.settings.replica_timeout * 4
    out = []
    for link in links:
        assert link.client is not None
        got = await asyncio.wait_for(
            link.client.checksums(lo, hi - lo, None, digest_blocks), timeout
        )
        out.append((link, np.frombuffer(got.values, dtype="<u4")))
    return out


async def _check(vol: Volume, start: int, end: int, want: np.ndarray) -> None:
    step = wire.MAX_CHECKSUM_BLOCKS * BLOCK_SIZE
    for lo in range(start, end, step):
        hi = min(end, lo + step)
        exp = want[(lo - start) // BLOCK_SIZE : (hi - start) // BLOCK_SIZE]
        for link, crcs in await _maps(vol, lo, hi):
            bad = np.flatnonzero(crcs != exp)
            if bad.size:
                block = lo // BLOCK_SIZE + int(bad[0])
                raise ChecksumError(
                    f"restore check: replica {link.spec.id} holds other data than the backup "
                    f"in {bad.size} block(s) of [{lo}, {hi}), first block {block} (offset "
                    f"{block * BLOCK_SIZE})",
                    blocks=[lo // BLOCK_SIZE + int(i) for i in bad[:16]],
                )
