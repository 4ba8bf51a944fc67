"""The disk stamp: ``<disk>/cargohold-disk.json``, which cluster (and node) a disk belongs to.

Format (version 1, documented in docs/formats/disk-stamp.md; a sample is checked in as
tests/data/disk-stamp-v1.json)::

    {"magic": "cargohold-disk", "version": 1, "cluster_id": "c-<32 hex>",
     "node": "node-1", "created_at": 1764979200.0}

The node agent writes it the first time a manager's assignments give it a cluster id (and
only when the manager knows the disk's replicas, or the disk holds none), and from then on
acts only for a manager of that cluster. ``encode``/``decode`` are pure (bytes in, bytes
out); ``read``/``write`` do the file I/O (write: a temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from cargohold.errors import FormatError

STAMP_FILE = "cargohold-disk.json"
MAGIC = "cargohold-disk"
VERSION = 1
MAX_BYTES = 4096
CLUSTER_ID = re.compile(r"^c-[0-9a-f]{32}$")


@dataclass(frozen=True)
class DiskStamp:
    cluster_id: str
    node: str
    created_at: float


def encode(stamp: DiskStamp) -> bytes:
    if not CLUSTER_ID.match(stamp.cluster_id):
        raise FormatError(f"disk stamp: bad cluster id {stamp.cluster_id!r}")
    body = {
        "magic": MAGIC,
        "version": VERSION,
        "cluster_id": stamp.cluster_id,
        "node": stamp.node,
        "created_at": stamp.created_at,
    }
    return (json.dumps(body, indent=2) + "\n").encode()


def decode(raw: bytes, where: str = STAMP_FILE) -> DiskStamp:
    if len(raw) > MAX_BYTES:
        raise FormatError(f"{where}: {len(raw)} bytes, more than a disk stamp's {MAX_BYTES}")
    try:
        body: Any = json.loads(raw)
    except ValueError as e:
        raise FormatError(f"{where}: not JSON: {e}") from None
    if not isinstance(body, dict) or body.get("magic") != MAGIC:
        raise FormatError(f"{where}: not a cargohold disk stamp (magic {MAGIC!r} missing)")
    version = body.get("version")
    if version != VERSION:
        raise FormatError(f"{where}: version {version!r}; this cargohold reads {VERSION}")
    cid, node, at = body.get("cluster_id"), body.get("node"), body.get("created_at")
    if not isinstance(cid, str) or not CLUSTER_ID.match(cid):
        raise FormatError(f"{where}: bad cluster id {cid!r}")
    if not isinstance(node, str):
        raise FormatError(f"{where}: bad node {node!r}")
    if not isinstance(at, int | float) or isinstance(at, bool):
        raise FormatError(f"{where}: bad created_at {at!r}")
    return DiskStamp(cluster_id=cid, node=node, created_at=float(at))


def read(disk: str) -> DiskStamp | None:
    """The stamp of ``disk``; None when it has none (FormatError when it is broken)."""
    path = os.path.join(disk, STAMP_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    return decode(raw, path)


def write(disk: str, cluster_id: str, node: str) -> DiskStamp:
    stamp = DiskStamp(cluster_id=cluster_id, node=node, created_at=time.time())
    path = os.path.join(disk, STAMP_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode(stamp))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return stamp
