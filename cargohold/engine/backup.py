"""The BACKUP operation: read a snapshot of this volume from one of its replicas and store it
in a backup repository (``cargohold.backup``). Called by ``control`` (the control op
``backup``, which the node agent sends for the manager's BACKUP operation).

- **Which replica**: a current (RW) one that holds the snapshot, the local one first.
- **How it reads**: EXPORT of the snapshot (never the head: writes are never held) chunk by
  chunk over a connection of its own to that replica, opened with this engine's identity
  and epoch, so the volume's I/O connection is not queued behind 4 MiB chunks. One EXPORT
  is in flight while the previous chunk is handed to the repository writer, so memory stays
  at a few chunks; ``backup_rate_mb`` caps the read rate and backups of the volume read one
  at a time (foreground I/O keeps priority).
- **Full or incremental** (``plan``, a pure function, docs/backups.md "How incremental
  backups decide"): a delta since the parent's generation only when it is provably
  complete; otherwise everything is read and the repository's dedup keeps the upload small.
  The result says which and why.
- **Failure**: any error aborts the writer (nothing is listed, what was stored is deleted);
  an engine killed mid-backup leaves only unreferenced objects (GC's) and the agent runs the
  operation again. A re-run after a backup was committed finds it by its record label
  (``RECORD_LABEL``: the manager's id) and answers with it instead of storing it twice.

Repository calls are synchronous and run in threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cargohold import lineage
from cargohold.backup.repository import Repository
from cargohold.backup.targets import open_target
from cargohold.constants import BLOCK_SIZE
from cargohold.engine.background import ForegroundYield
from cargohold.engine.replica_link import ReplicaLink
from cargohold.engine.volume import Volume, describe
from cargohold.errors import (
    Busy,
    CargoholdError,
    InvalidArgument,
    NotFound,
    ReplicaIOError,
)
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient

log = logging.getLogger("cargohold.engine")

EXPORT_CHUNK = 4 << 20  # data per EXPORT of a backup
EXPORT_SPAN = 1 << 30  # most volume one EXPORT asks about (its length is a u32 on the wire)
RECORD_LABEL = "cargohold.io/record"  # the manager's backup id (a re-run finds it)
HISTORY_LABEL = "cargohold.io/history"  # the replica's epoch history at the snapshot
UPLOADS = 4  # the repository's upload threads


# --- the rule: delta or everything ---------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    since: int  # 0: read everything
    parent: str | None  # the backup the repository writer starts from (None: full)
    reason: str

    @property
    def mode(self) -> str:
        return "incremental" if self.since else "full"


def encode_history(history: lineage.History, upto: int) -> str:
    """A replica's history up to generation ``upto`` as a label: ``epoch:first,...``."""
    return ",".join(f"{int(e)}:{int(g)}" for e, g in history if int(g) <= upto)


def decode_history(text: str) -> list[list[int]] | None:
    try:
        out = [[int(a), int(b)] for a, b in (p.split(":") for p in text.split(",") if p)]
    except ValueError:
        return None
    return out


def plan(
    *,
    parent_id: str | None,
    parent: Mapping[str, Any] | None,
    parent_generation: int | None,
    volume_id: str,
    size: int,
    snapshot_generation: int,
    history: lineage.History,
) -> Plan:
    """Read only what changed since the parent, or everything, and why.

    ``parent`` is the parent's record in the repository (``BackupInfo.to_dict()``; None when
    it is not there), ``history`` the chosen replica's epoch history and
    ``snapshot_generation`` the snapshot's generation on it. A delta is used only when it is
    provably complete: the parent is a backup of this very volume (same uid: not an earlier
    volume of the same name), of the same size, taken at a generation above 0 and not above
    the snapshot's, and the mutations up to the parent's generation are the same on this
    replica's line as on the one the parent was read from (``lineage.contained``: no
    engine after a lost line reused those generations). Reverts and rebuilt replicas need no
    rule of their own: a revert records every block it changes at a new generation, and a
    rebuild records what it copies at the generation of the copy, so their deltas can only
    be larger than what changed, never smaller.
    """

    def full(why: str) -> Plan:
        return Plan(0, None, why)

    if not parent_id:
        return full("no parent")
    if parent is None:
        return full(f"parent {parent_id} is not in the repository")
    if parent.get("volume_id") != volume_id:
        return full(
            f"parent {parent_id} is of another volume (uid {parent.get('volume_id')!r}, this "
            f"one is {volume_id!r}): an earlier volume of the same name, or another volume"
        )
    if parent.get("size") != size:
        return full(
            f"the volume's size changed since parent {parent_id} ({parent.get('size')} -> {size})"
        )
    pgen = parent.get("generation")
    if not isinstance(pgen, int) or pgen <= 0:
        return full(f"parent {parent_id} was taken at generation {pgen!r}: nothing to start from")
    if parent_generation is not None and parent_generation != pgen:
        return full(
            f"the manager's parent generation {parent_generation} disagrees with the "
            f"repository's {pgen} for parent {parent_id}"
        )
    if pgen > snapshot_generation:
        return full(
            f"parent {parent_id} (generation {pgen}) is newer than the snapshot "
            f"(generation {snapshot_generation})"
        )
    labels = parent.get("labels") or {}
    recorded = (
        decode_history(str(labels.get(HISTORY_LABEL, ""))) if HISTORY_LABEL in labels else None
    )
    if recorded is None:
        return full(f"parent {parent_id} records no replica history")
    if not lineage.contained(recorded, pgen, history, snapshot_generation):
        return full(
            f"the volume's history diverged after parent {parent_id} (its epochs "
            f"{recorded}, the replica's {list(history)}): generations may have been reused"
        )
    return Plan(pgen, str(parent_id), f"changed since parent {parent_id} (generation {pgen})")


# --- the repository from the operation's secrets --------------------------------------------
def open_repository(secrets: Mapping[str, Any]) -> Repository:
    """The repository the secrets name (url, endpoint, region, keys, ca_bundle, the
    repository key in base64). Synchronous: run it in a thread."""
    url = secrets.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidArgument("the operation carries no backup target (secrets without url)")
    try:
        key = base64.b64decode(str(secrets.get("repository_key", "")), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("the repository key is not base64") from None
    if len(key) != 32:
        raise InvalidArgument(f"the repository key must be 32 bytes, got {len(key)}")
    ca = str(secrets.get("ca_bundle") or "") or None
    if ca is not None and ca.lstrip().startswith("-----BEGIN"):
        # PEM text: the S3 client wants a file
        path = os.path.join(
            tempfile.gettempdir(),
            f"cargohold-ca-{hashlib.sha256(ca.encode()).hexdigest()[:16]}.pem",
        )
        if not os.path.exists(path):  # one file per bundle, however many operations
            fd, tmp = tempfile.mkstemp(prefix="cargohold-ca-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(ca)
            os.replace(tmp, path)
        ca = path

    def opt(name: str) -> str | None:
        v = secrets.get(name)
        return str(v) if v else None

    target = open_target(
        url,
        endpoint=opt("endpoint"),
        access_key=opt("access_key"),
        secret_key=opt("secret_key"),
        region=opt("region"),
        ca_bundle=ca,
    )
    return Repository.open(target, key, uploads=UPLOADS)


# --- jobs on the volume ------------------------------------------------------------------------
def new_job(vol: Volume, op_id: str, kind: str, total: int = 0) -> dict[str, Any]:
    """A job the agent follows through ``status()["jobs"][op_id]``; a running one with the
    same id is Busy (the agent then follows that one)."""
    old = vol.jobs.get(op_id)
    if old is not None and old["state"] == "running":
        raise Busy(f"volume {vol.name}: {kind} {op_id} is running already")
    job: dict[str, Any] = {
        "kind": kind,
        "state": "running",
        "bytes_done": 0,
        "bytes_total": total,
        "error": "",
        "result": {},
        "started": time.time(),
    }
    vol.jobs[op_id] = job
    while len(vol.jobs) > 16:  # keep the newest few
        oldest = next(k for k, v in vol.jobs.items() if v["state"] != "running" or k == op_id)
        if oldest == op_id:
            break
        del vol.jobs[oldest]
    return job


def check_args(args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise InvalidArgument("args must be an object")
    for name in ("backup", "snapshot", "volume_id"):
        if not isinstance(args.get(name), str) or not args[name]:
            raise InvalidArgument(f"backup: argument {name!r} (a string) is required")
    if args.get("parent") is not None and not isinstance(args["parent"], str):
        raise InvalidArgument("backup: parent must be a backup id or null")
    pg = args.get("parent_generation")
    if pg is not None and (not isinstance(pg, int) or isinstance(pg, bool)):
        raise InvalidArgument("backup: parent_generation must be an integer or null")
    labels = args.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidArgument("backup: labels must be an object of strings")
    return args


async def start_backup(
    vol: Volume, op_id: str, args: Any, secrets: Mapping[str, Any]
) -> dict[str, Any]:
    """Check the request, start the backup in the background; -> the job as it is now."""
    vol.check_usable()
    args = check_args(args)
    if not isinstance(secrets, Mapping):
        raise InvalidArgument("secrets must be an object")
    job = new_job(vol, op_id, "backup", vol.size)
    vol.spawn(_run(vol, job, args, dict(secrets)))
    return dict(job)


async def _run(
    vol: Volume, job: dict[str, Any], args: dict[str, Any], secrets: dict[str, Any]
) -> None:
    t0 = time.monotonic()
    try:
        job["result"] = await backup(vol, job, args, secrets)
    except asyncio.CancelledError:
        job.update(state="failed", error="cancelled: the engine stopped")
        raise
    except Exception as e:
        job.update(state="failed", error=describe(e))
        log.warning(
            "volume %s: backup of snapshot %s failed: %s", vol.name, args.get("snapshot"), e
        )
    else:
        job.update(state="succeeded", seconds=round(time.monotonic() - t0, 3))
        r = job["result"]
        log.info(
            "volume %s: backup %s of snapshot %s: %s (%s), %d bytes read, %d new, %.2f s",
            vol.name,
            r.get("id"),
            args["snapshot"],
            r.get("mode"),
            r.get("reason"),
            r.get("bytes_read", 0),
            r.get("bytes_new", 0),
            job["seconds"],
        )


async def _choose(vol: Volume, snapshot: str) -> tuple[ReplicaLink, dict[str, Any]]:
    """A current replica holding the snapshot (the local one first), and the snapshot."""
    why = []
    for link in vol.readers():
        if link.client is None:
            continue
        try:
            snaps = await asyncio.wait_for(
                link.client.snapshot_list(), vol.settings.replica_timeout
            )
        except (CargoholdError, OSError, TimeoutError) as e:
            why.append(f"{link.spec.id}: {describe(e)}")
            continue
        info = next((s for s in snaps if s.get("name") == snapshot), None)
        if info is not None:
            return link, info
        why.append(f"{link.spec.id}: no snapshot {snapshot!r}")
    raise NotFound(
        f"volume {vol.name}: no current replica holds snapshot {snapshot!r} ("
        + ("; ".join(why) or "no current replica")
        + ")"
    )


_SLOTS: weakref.WeakKeyDictionary[Volume, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _slot(vol: Volume) -> asyncio.Semaphore:
    """Backups of one volume read one at a time (one EXPORT in flight for the volume): a
    second one waits, ``running`` at 0 bytes, so foreground I/O keeps priority."""
    slot = _SLOTS.get(vol)
    if slot is None:
        slot = _SLOTS[vol] = asyncio.Semaphore(1)
    return slot


async def _connect(vol: Volume, link: ReplicaLink) -> ReplicaClient:
    """A connection of the backup's own to the replica, opened at this engine's epoch."""
    spec, timeout = link.spec, vol.settings.replica_timeout
    client = await ReplicaClient.connect(
        spec.host, spec.port, timeout=timeout, tls=vol.tls, replica=spec.id
    )
    try:
        await asyncio.wait_for(client.open(spec.id, vol.epoch), timeout)
    except BaseException:
        client.close_nowait()
        raise
    return client


async def backup(
    vol: Volume, job: dict[str, Any], args: dict[str, Any], secrets: dict[str, Any]
) -> dict[str, Any]:
    repo = await asyncio.to_thread(open_repository, secrets)
    record = str(args["backup"])
    listed = await asyncio.to_thread(repo.backups)  # one GET of the catalog
    done = next((b for b in listed if b.labels.get(RECORD_LABEL) == record), None)
    if done is not None:  # a re-run after the commit: it is there already
        job["bytes_done"] = job["bytes_total"]
        return {**done.to_dict(), "reason": "stored already by an earlier run"}
    link, snap = await _choose(vol, str(args["snapshot"]))
    assert link.client is not None
    info = await asyncio.wait_for(link.client.info(), vol.settings.replica_timeout)
    size, history = int(info["size"]), info.get("history") or []
    sgen = int(snap.get("generation", 0))
    parent_id = args.get("parent")
    parent = next((b.to_dict() for b in listed if b.id == parent_id), None) if parent_id else None
    p = plan(
        parent_id=parent_id,
        parent=parent,
        parent_generation=args.get("parent_generation"),
        volume_id=str(args["volume_id"]),
        size=size,
        snapshot_generation=sgen,
        history=history,
    )
    labels = {
        **{str(k): str(v) for k, v in (args.get("labels") or {}).items()},
        RECORD_LABEL: record,
        HISTORY_LABEL: encode_history(history, sgen),
    }
    log.info(
        "volume %s: backup of snapshot %s from replica %s: %s (%s)",
        vol.name,
        args["snapshot"],
        link.spec.id,
        p.mode,
        p.reason,
    )
    job["bytes_total"] = size
    writer = await asyncio.to_thread(
        repo.start_backup,
        vol.name,
        str(args["volume_id"]),
        size,
        str(args["snapshot"]),
        sgen,
        labels,
        p.parent,
    )
    client = None
    try:
        async with _slot(vol):  # one backup of this volume reads at a time
            client = await _connect(vol, link)
            await _copy(vol, client, writer, str(args["snapshot"]), p.since, size, job)
        result = await asyncio.to_thread(writer.commit)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(writer.abort))
        raise
    finally:
        if client is not None:
            client.close_nowait()
    job["bytes_done"] = size
    return {**result.to_dict(), "mode": p.mode, "reason": p.reason, "replica": link.spec.id}


async def _copy(
    vol: Volume,
    client: ReplicaClient,
    writer: Any,
    snapshot: str,
    since: int,
    size: int,
    job: dict[str, Any],
) -> None:
    """EXPORT the snapshot chunk by chunk (the next one in flight while this one is
    stored); DATA -> writer.write, ZERO -> writer.zero; keep to ``backup_rate_mb``."""
    timeout = vol.settings.replica_timeout * 4
    rate = vol.settings.backup_rate_mb * 1_000_000
    t0 = time.monotonic()
    read = 0
    courtesy = ForegroundYield(vol.counters, most=vol.settings.background_yield_max)

    def export(pos: int) -> asyncio.Task[memoryview]:
        call = client.export(
            pos,
            min(size - pos, EXPORT_SPAN),
            since=since,
            max_bytes=EXPORT_CHUNK,
            snapshot=snapshot,
        )
        return asyncio.ensure_future(asyncio.wait_for(call, timeout))

    pos = 0
    pending: asyncio.Task[memoryview] | None = export(0)
    try:
        while pending is not None:
            blob = await pending
            pending = None
            header, extents = xs.decode(blob)
            if header.start != pos or not pos < header.end <= size:
                raise ReplicaIOError(
                    f"backup export: got [{header.start}, {header.end}), asked from {pos}"
                )
            if header.end < size:
                pending = export(header.end)
            await asyncio.to_thread(_store, writer, extents)
            read += sum(e.count for e in extents if e.kind == xs.KIND_DATA) * BLOCK_SIZE
            pos = job["bytes_done"] = header.end
            job["bytes_read"] = read
            if rate:
                ahead = read / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await courtesy.pause()  # engine/background.py
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


def _store(writer: Any, extents: list[xs.Extent]) -> None:
    for e in extents:
        off, length = e.lba * BLOCK_SIZE, e.count * BLOCK_SIZE
        if e.kind == xs.KIND_DATA:
            assert e.data is not None
            writer.write(off, e.data)
        else:
            writer.zero(off, length)
