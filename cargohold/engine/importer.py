"""Import (for clones): copy a snapshot of a replica of another volume into a volume.

Called by ``control`` (the engine's control op ``import``). The source replica is opened
at the epoch it already has, so the engine that owns it, if one runs, is not fenced. The
snapshot is read as extent streams (EXPORT) and written through the volume's ordinary
replicated write path, in the background; the job's progress is ``Volume.import_job``,
which the volume shows as ``status()["import"]``.

The copy is background work (engine/background.py): it keeps to ``import_bandwidth`` and,
while the volume's consumer does I/O, yields to it between chunks (and does not export
the next chunk ahead); the job shows ``yields`` and ``yielded_seconds``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from cargohold.constants import BLOCK_SIZE
from cargohold.engine.background import Pace
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.volume import Volume, describe
from cargohold.errors import Busy, CargoholdError, Fenced, InvalidArgument, NotFound, ReplicaIOError
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient

log = logging.getLogger("cargohold.engine")

IMPORT_CHUNK = 4 << 20  # data per EXPORT of an import (and per batch of writes)


async def start_import(
    vol: Volume, source: ReplicaSpec, snapshot: str, grant: str | None = None
) -> dict[str, Any]:
    """Check the source (reachable, has the snapshot, fits), start the copy in the
    background, and return the job's progress as it is now. ``grant``: the manager's read
    grant for the source (security/grants.py), which a replica server over TLS requires
    of an engine of another volume."""
    vol.check_usable()
    if vol.import_job is not None and vol.import_job["state"] == "running":
        raise Busy(f"volume {vol.name}: an import is already running ({vol.import_job})")
    job: dict[str, Any] = {
        "state": "running",
        "source": str(source),
        "snapshot": snapshot,
        "bytes_copied": 0,
        "bytes_total": 0,
        "data_bytes": 0,
        "error": "",
    }
    vol.import_job = job
    try:
        client = await _open_source(vol, source, grant=grant)
        try:
            job["bytes_total"] = await _import_extent(vol, client, source, snapshot)
        except BaseException:
            client.close_nowait()
            raise
    except (CargoholdError, OSError, TimeoutError) as e:
        job.update(state="failed", error=describe(e))
        if isinstance(e, CargoholdError):
            raise
        raise ReplicaIOError(f"import source {source}: {describe(e)}") from None
    vol.spawn(_run_import(vol, client, source, snapshot, job, grant))
    return dict(job)


async def _open_source(
    vol: Volume, source: ReplicaSpec, client: ReplicaClient | None = None, grant: str | None = None
) -> Any:
    """Open the source replica with the epoch it already has: its engine, if one runs,
    is not fenced (a replica accepts an OPEN at its own epoch). That epoch comes from
    LIST (while the replica is open on its server) or from the refusal of an older one.
    """
    timeout = vol.settings.replica_timeout
    if client is None:
        client = await ReplicaClient.connect(
            source.host, source.port, timeout=timeout, tls=vol.tls, replica=source.id
        )
    try:
        listed = await asyncio.wait_for(client.list(grant), timeout)
        item = next((x for x in listed if x.get("id") == source.id), None)
        if item is None:
            raise NotFound(f"import source {source}: no replica {source.id} on that server")
        epoch = item.get("epoch", 0)
        try:
            await asyncio.wait_for(client.open(source.id, epoch, grant=grant), timeout)
        except Fenced as e:  # it has a newer epoch than LIST said (or LIST did not say)
            newer = e.detail.get("epoch")
            if not isinstance(newer, int) or newer <= epoch:
                raise
            await asyncio.wait_for(client.open(source.id, newer, grant=grant), timeout)
    except BaseException:
        client.close_nowait()
        raise
    return client


async def _import_extent(vol: Volume, client: ReplicaClient, source: ReplicaSpec, name: str) -> int:
    """How much of the volume the import covers: the source's size, which must fit in
    the volume — or, for a snapshot taken before its volume grew, the part of it that
    holds data."""
    timeout = vol.settings.replica_timeout * 4
    snaps = await asyncio.wait_for(client.snapshot_list(), timeout)
    if not any(s.get("name") == name for s in snaps):
        have = ", ".join(s.get("name", "?") for s in snaps) or "none"
        raise NotFound(f"import source {source}: no snapshot {name!r} (it has: {have})")
    size = (await asyncio.wait_for(client.info(), timeout))["size"]
    pos = vol.size
    while pos < size:  # beyond our size: the snapshot must hold no data there
        extents = await asyncio.wait_for(client.extents(pos, size - pos, name), timeout)
        for off, length, kind in extents:
            if kind == xs.KIND_DATA:
                raise InvalidArgument(
                    f"snapshot {name!r} of {source} is larger than volume {vol.name}: it "
                    f"holds data at byte {off}, and this volume has {vol.size} bytes"
                )
            pos = off + length
        if not extents:
            break
    return min(size, vol.size)


async def _run_import(
    vol: Volume,
    client: ReplicaClient,
    source: ReplicaSpec,
    name: str,
    job: dict[str, Any],
    grant: str | None = None,
) -> None:
    total = job["bytes_total"]
    fresh = vol.gen == 0  # nothing was ever written: skip holes and zeros
    prefetch: asyncio.Task[Any] | None = None
    t0 = time.monotonic()
    pace = Pace(vol.counters, vol.settings.import_bandwidth, vol.settings.background_yield_max)
    try:
        pos = 0
        while pos < total:
            blob = await (prefetch or _export(vol, client, source, name, pos, total, grant))
            header, extents = xs.decode(blob)
            if header.start != pos or not pos < header.end <= total:
                raise ReplicaIOError(
                    f"import source {source}: exported [{header.start}, {header.end}), "
                    f"asked from {pos}"
                )
            prefetch = None
            if header.end < total and not pace.busy():  # the next chunk meanwhile
                loop = asyncio.get_running_loop()
                prefetch = loop.create_task(
                    _export(vol, client, source, name, header.end, total, grant)
                )
            data, ops = await _import_chunk(vol, pos, header.end, extents, fresh)
            job["data_bytes"] += data
            pos = job["bytes_copied"] = header.end
            await pace.chunk(data, ops)  # its cap, then the consumer first
            job.update(pace.status())
        await vol.flush()  # durable on every replica before it is "succeeded"
    except asyncio.CancelledError:
        job.update(state="failed", error="cancelled: the engine stopped")
        raise
    except Exception as e:
        job.update(state="failed", error=describe(e))
        log.warning("volume %s: import of %s from %s failed: %s", vol.name, name, source, e)
    else:
        job.update(state="succeeded", seconds=round(time.monotonic() - t0, 3))
        log.info(
            "volume %s: imported snapshot %s of %s: %d bytes of data in %.2f s",
            vol.name,
            name,
            source,
            job["data_bytes"],
            job["seconds"],
        )
    finally:
        if prefetch is not None:
            prefetch.cancel()
            await asyncio.gather(prefetch, return_exceptions=True)
        client.close_nowait()


async def _export(
    vol: Volume,
    client: ReplicaClient,
    source: ReplicaSpec,
    name: str,
    pos: int,
    end: int,
    grant: str | None = None,
) -> memoryview:
    """One chunk of the snapshot. If the source's engine changed meanwhile (a newer
    epoch: Fenced), open it again at that epoch, once, and go on."""
    timeout = vol.settings.replica_timeout * 4
    call = functools.partial(client.export, pos, end - pos, max_bytes=IMPORT_CHUNK, snapshot=name)
    try:
        return await asyncio.wait_for(call(), timeout)
    except Fenced:
        log.info("volume %s: import source %s has a new epoch; reopening", vol.name, source)
        await _open_source(vol, source, client, grant)
        return await asyncio.wait_for(call(), timeout)


async def _import_chunk(
    vol: Volume, start: int, end: int, extents: list[xs.Extent], fresh: bool
) -> tuple[int, int]:
    """Write one chunk's data through the replicated write path; unless the volume is
    fresh (reads zeros everywhere), zero what the snapshot does not hold. -> (bytes of
    data, requests sent)."""
    writes = []
    data = 0
    pos = start
    for e in extents:
        off, length = e.lba * BLOCK_SIZE, e.count * BLOCK_SIZE
        if not fresh and off > pos:
            writes.append(vol.write_zeroes(pos, off - pos, False))
        if e.kind == xs.KIND_DATA:
            assert e.data is not None
            writes.append(vol.write(off, e.data, False))
            data += length
        elif not fresh:
            writes.append(vol.write_zeroes(off, length, False))
        pos = off + length
    if not fresh and pos < end:
        writes.append(vol.write_zeroes(pos, end - pos, False))
    results = await asyncio.gather(*writes, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    vol.counters["imported_bytes"] += data
    return data, len(writes)
