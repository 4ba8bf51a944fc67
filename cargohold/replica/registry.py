"""The node's replicas: where each lives (``<disk>/replicas/<id>/``), opened on demand.

Called by sessions of the replica server. A replica is opened once and shared by every
session that opens it; deleting it closes it for all of them and moves its directory into
the disk's trash (``<disk>/trash/<id>.<unix time>/``, see trash.py), from where it can be
moved back until the node agent empties it.

A replica created with a cluster id keeps it in its metadata's labels (``cluster_id``), and
the volume it belongs to (``volume``: whose engine may open it, replica/session.py);
LIST reports it with what an orphan's record needs (generation, epoch history, snapshots).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cargohold.constants import RECOVERED, RECOVERING, STORE_WRITE_CHUNK
from cargohold.errors import AlreadyExists, Busy, CargoholdError, InvalidArgument, NotFound
from cargohold.replica.trash import move_to_trash
from cargohold.store import format as fmt
from cargohold.store.file_store import META_FILE, FileStore
from cargohold.store.flush_gate import FlushGate

log = logging.getLogger("cargohold.replica")

REPLICA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CLUSTER_ID = re.compile(r"^c-[0-9a-f]{32}$")


@dataclass
class OpenReplica:
    id: str
    path: str
    store: FileStore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # snapshot, scrub, expand
    flushes: FlushGate = field(default_factory=FlushGate)
    deleted: bool = False
    sessions: int = 0
    disk: DiskStats = field(default_factory=lambda: DiskStats())  # its disk's numbers (metrics)


@dataclass
class DiskStats:
    """One disk's numbers since the replica server started, for the node's metrics (the
    agent reads them from LIST): requests and errors on its replicas, FLUSH latency in
    power-of-two buckets of microseconds (cargohold/metrics/histograms.py)."""

    ops: int = 0
    errors: int = 0
    flush_log2_us: dict[int, int] = field(default_factory=dict)
    flush_sum_us: int = 0

    def flushed(self, us: int) -> None:
        k = us.bit_length() - 1 if us > 0 else 0
        self.flush_log2_us[k] = self.flush_log2_us.get(k, 0) + 1
        self.flush_sum_us += us

    def as_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "errors": self.errors,
            "flush_log2_us": dict(self.flush_log2_us),
            "flush_sum_us": self.flush_sum_us,
        }


class Registry:
    def __init__(
        self,
        disks: list[str],
        owns: Callable[[str], bool] | None = None,
        write_chunk: int = STORE_WRITE_CHUNK,
    ) -> None:
        if not disks:
            raise InvalidArgument("a replica server needs at least one disk directory")
        self.disks = [os.path.abspath(d) for d in disks]
        for d in self.disks:
            os.makedirs(os.path.join(d, "replicas"), exist_ok=True)
        self.open: dict[str, OpenReplica] = {}
        self._owns = owns  # with worker processes: does this one own a replica id?
        self.stats: dict[str, DiskStats] = {d: DiskStats() for d in self.disks}
        self.write_chunk = write_chunk  # the replicas' stores' (settings.store_write_chunk)

    def disk_stats(self, replica_path: str) -> DiskStats:
        """The numbers of the disk a replica directory (<disk>/replicas/<id>) is on."""
        disk = os.path.dirname(os.path.dirname(os.path.abspath(replica_path)))
        return self.stats.setdefault(disk, DiskStats())

    def _check_id(self, rid: Any) -> str:
        if not isinstance(rid, str) or not REPLICA_ID.match(rid):
            raise InvalidArgument(f"bad replica id {rid!r}: 1-128 of [A-Za-z0-9._-]")
        if self._owns is not None and not self._owns(rid):
            raise Busy(
                f"replica {rid} is served by another worker process of this server; "
                "open a new connection for it"
            )
        return rid

    def locate(self, rid: str) -> str | None:
        for d in self.disks:
            path = os.path.join(d, "replicas", rid)
            if os.path.exists(os.path.join(path, "replica.meta")):
                return path
        return None

    def create(
        self, rid: Any, size: Any, disk: Any = None, cluster_id: Any = None, volume: Any = None
    ) -> OpenReplica:
        rid = self._check_id(rid)
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidArgument(f"size must be an integer number of bytes, got {size!r}")
        if cluster_id is not None and (
            not isinstance(cluster_id, str) or not CLUSTER_ID.match(cluster_id)
        ):
            raise InvalidArgument(f"bad cluster id {cluster_id!r}: c-<32 hex digits>")
        if volume is not None and (not isinstance(volume, str) or not REPLICA_ID.match(volume)):
            raise InvalidArgument(f"bad volume name {volume!r}: 1-128 of [A-Za-z0-9._-]")
        labels = {"replica": rid}
        if cluster_id:
            labels["cluster_id"] = cluster_id
        if volume:
            labels["volume"] = volume  # whose engine may open it (docs/security.md)
        if self.locate(rid) is not None:
            raise AlreadyExists(f"replica {rid} exists")
        if disk is None:
            disk = max(self.disks, key=lambda d: shutil.disk_usage(d).free)
        elif os.path.abspath(str(disk)) not in self.disks:
            raise InvalidArgument(f"disk {disk!r} is not one of this server's disks {self.disks}")
        path = os.path.join(os.path.abspath(str(disk)), "replicas", rid)
        try:
            store = FileStore.create(path, size, write_chunk=self.write_chunk, **labels)
        except Exception:
            shutil.rmtree(path, ignore_errors=True)
            raise
        rep = OpenReplica(rid, path, store, disk=self.disk_stats(path))
        self.open[rid] = rep
        log.info("created replica %s (%d bytes) in %s", rid, size, path)
        return rep

    def get(self, rid: Any) -> OpenReplica:
        rid = self._check_id(rid)
        rep = self.open.get(rid)
        if rep is not None:
            return rep
        path = self.locate(rid)
        if path is None:
            raise NotFound(f"no replica {rid} on this node")
        rep = OpenReplica(
            rid, path, FileStore.open(path, self.write_chunk), disk=self.disk_stats(path)
        )
        self.open[rid] = rep
        return rep

    def recover_crashed(self) -> list[str]:
        """Open now every replica (of this worker) whose head says the machine crashed:
        its open verifies the head's written data (docs/formats/replica-store.md, "Machine
        crashes"), which can take longer than an engine waits for OPEN. The server calls
        this before it listens; the other replicas stay lazy. -> the ids opened."""
        done = []
        for d in self.disks:
            root = os.path.join(d, "replicas")
            for rid in sorted(os.listdir(root)):
                path = os.path.join(root, rid)
                if rid in self.open or not os.path.exists(os.path.join(path, META_FILE)):
                    continue
                if self._owns is not None and not self._owns(rid):
                    continue
                started = False
                try:
                    if not FileStore.crashed_machine(path):
                        continue
                    # the agent waits as long as this line has no answer below (RECOVERING)
                    log.warning("%s %s: verifying its head before serving", RECOVERING, rid)
                    started = True
                    t0 = time.monotonic()
                    c = self.get(rid).store.counters
                except Exception as e:  # one replica's bad files never stop the
                    # server's start (nor the other replicas'); its OPEN will report it
                    log.error("replica %s: recovery after a machine crash failed: %r", rid, e)
                    continue
                finally:
                    if started:
                        log.warning("%s %s: ended", RECOVERED, rid)
                log.warning(
                    "replica %s: recovered from a machine crash in %.1f s: %d blocks settled, "
                    "%d torn blocks adopted, %d lost (fail their check until repaired)",
                    rid,
                    time.monotonic() - t0,
                    c["recovered_blocks"],
                    c["adopted_blocks"],
                    c["lost_blocks"],
                )
                done.append(rid)
        return done

    def delete(self, rid: Any) -> None:
        rid = self._check_id(rid)
        rep = self.open.pop(rid, None)
        path = rep.path if rep else self.locate(rid)
        if path is None:
            raise NotFound(f"no replica {rid} on this node")
        if rep is not None:
            rep.deleted = True
            rep.store.close()
        disk = os.path.dirname(os.path.dirname(path))
        where = move_to_trash(disk, path, rid)
        log.info("deleted replica %s: moved to %s", rid, where)

    def list(self) -> list[dict[str, Any]]:
        out = []
        for d in self.disks:
            root = os.path.join(d, "replicas")
            for rid in sorted(os.listdir(root)):
                if not os.path.exists(os.path.join(root, rid, "replica.meta")):
                    continue
                rep = self.open.get(rid)
                item: dict[str, Any] = {"id": rid, "disk": d, "open": rep is not None}
                if rep is not None:
                    s = rep.store
                    item.update(
                        size=s.size,
                        generation=s.generation,
                        epoch=s.epoch,
                        seen=s.seen,
                        history=s.history,
                        snapshots=[x.name for x in s.snapshot_list()],
                        cluster_id=s.labels.get("cluster_id", ""),
                        volume=s.labels.get("volume", ""),
                    )
                else:
                    item.update(_from_meta(os.path.join(root, rid)))
                out.append(item)
        return out

    def close_all(self) -> None:
        for rep in self.open.values():
            try:
                rep.store.close()
            except Exception:  # closing on shutdown: log and go on with the others
                log.exception("closing replica %s", rep.id)
        self.open.clear()


def _from_meta(path: str) -> dict[str, Any]:
    """What a replica nobody has open says about itself without opening it (its metadata
    file only: generation and seen need its layers, so they come once it is opened)."""
    try:
        with open(os.path.join(path, META_FILE), "rb") as f:
            meta = fmt.decode_meta(f.read(), path)
        return {
            "size": int(meta["size"]),
            "epoch": int(meta.get("epoch", 0)),
            "history": [list(x) for x in meta.get("history", [])],
            "snapshots": sorted(
                str(v["snapshot"]["name"])
                for v in meta.get("layers", {}).values()
                if isinstance(v, dict) and isinstance(v.get("snapshot"), dict)
            ),
            "cluster_id": str((meta.get("labels") or {}).get("cluster_id", "")),
            "volume": str((meta.get("labels") or {}).get("volume", "")),
        }
    except (OSError, CargoholdError, KeyError, TypeError, ValueError) as e:
        return {"error": f"cannot read its metadata: {e}"}
