"""A read-only view of a replica on this host's disk, beside the replica server that owns it.

Used by a volume engine for its *local* replica (``engine.local_reads``): reading the
replica's files directly saves a round trip through the replica server for every read, the
largest cost of a read. Nothing here writes: the layers are opened read-only and their block
maps mapped read-only (MAP_SHARED, so the owner's stores are seen at once), and every block
read is checked against its CRC32C as the owner's reads are (invariant 5).

The owner keeps changing the replica while a reader is open, so a reader is only correct
under rules its user keeps (docs/engine.md, "Local reads"):

- Same files: ``identity`` (this kernel's boot id and the directory's device and inode) must
  equal what the owner reported, or the path names another host's or namespace's files.
- Same layer chain: a snapshot, revert, expansion or snapshot deletion changes the chain or
  the map files; the reader is reopened after each (the engine drives all of them).
- Same owner: ``changed`` tells when the replica's metadata (its epoch above all) was
  rewritten, e.g. because a newer engine opened it; the user then re-checks.
- A block whose checksum fails here may be a write racing the read: the user reads it again
  through the owner, which orders reads and writes, and repairs real rot.
"""

from __future__ import annotations

import os
from typing import Any

from cargohold.errors import FormatError, NotFound
from cargohold.store import format as fmt
from cargohold.store.file_store import META_FILE, FileStore
from cargohold.store.layer import Layer

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def host_identity(directory: str) -> dict[str, Any]:
    """What tells a replica directory apart from every other one: the running kernel (boot
    id) and the directory's (device, inode). Reported by the replica server at OPEN."""
    st = os.stat(directory)
    return {"boot_id": boot_id(), "dev": st.st_dev, "ino": st.st_ino}


def boot_id() -> str:
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


class ReplicaReader:
    """Reads of one replica's current data (its head and the layers below), read-only."""

    def __init__(self, directory: str, store: FileStore, meta_stat: os.stat_result) -> None:
        self.directory = directory
        self._store = store
        self._meta_stat = meta_stat

    @classmethod
    def open(cls, directory: str) -> ReplicaReader:
        path = os.path.join(directory, META_FILE)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                meta = fmt.decode_meta(f.read(), path)
        except FileNotFoundError:
            raise NotFound(f"no replica in {directory}") from None
        layers: dict[int, Layer] = {}
        try:
            for lid in meta["layers"]:
                layers[int(lid)] = Layer.open(directory, int(lid), readonly=True)
            store = FileStore(directory, meta, layers)
        except BaseException:
            for layer in layers.values():
                layer.close()
            raise
        return cls(directory, store, st)

    def identity(self) -> dict[str, Any]:
        return host_identity(self.directory)

    @property
    def size(self) -> int:
        return self._store.size

    @property
    def epoch(self) -> int:
        return self._store.epoch

    def read(self, offset: int, length: int) -> bytearray:
        """The bytes of [offset, offset + length), 4 KiB-aligned, every block verified.
        Raises ChecksumError (as the owner's reads do), InvalidArgument beyond the size this
        reader was opened with, ReplicaIOError/OSError when a file cannot be read."""
        return self._store.read(offset, length)

    def changed(self) -> bool:
        """Whether the replica's metadata file was replaced since this reader opened it
        (every metadata change is an atomic rename: a new inode)."""
        try:
            st = os.stat(os.path.join(self.directory, META_FILE))
        except OSError:
            return True
        return (st.st_ino, st.st_mtime_ns) != (self._meta_stat.st_ino, self._meta_stat.st_mtime_ns)

    def close(self) -> None:
        for layer in self._store._layers.values():
            try:
                layer.close()
            except (OSError, FormatError):
                pass
        self._store._layers = {}
        self._store._chain = []
