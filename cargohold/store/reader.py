"""A read-only view of a replica on this host's disk, beside the replica server that owns it.

Used by a volume engine for its *local* replica (``engine.local_reads``): reading the
replica's files directly saves a round trip through the replica server for every read, the
largest cost of a read. Nothing here writes: the layers are opened read-only and their block
maps mapped read-only (MAP_SHARED, so the owner's stores are seen at once), and every block
read is checked against its CRC32C as the owner's reads are (invariant 5).

It reads the format of docs/formats/replica-store.md itself, through memoryview casts of
the maps and without numpy: one engine runs per attached volume, and numpy would cost
each of them about 10 MiB. ``tests/unit/store/test_reader.py`` checks that it reads
exactly what ``FileStore.read`` reads, over random layer trees.

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

import mmap
import os
from typing import Any

from crc32c import crc32c

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import ChecksumError, FormatError, InvalidArgument, NotFound
from cargohold.store import format as fmt

META_FILE = "replica.meta"  # as file_store.META_FILE
_ZERO_BLOCK = bytes(BLOCK_SIZE)
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


class _Layer:
    """One layer, read-only: its data segments and its block map (``meta`` and CRCs)."""

    def __init__(self, directory: str, layer_id: int) -> None:
        self.id = layer_id
        self.fds: list[int] = []
        base = os.path.join(directory, f"layer-{layer_id:06d}")
        mfd = os.open(base + ".map", os.O_RDONLY | os.O_CLOEXEC)
        try:
            h = fmt.decode_map_header(os.pread(mfd, fmt.HEADER_SIZE, 0), base + ".map")
            size = fmt.HEADER_SIZE + h.nblocks * fmt.RECORD_SIZE
            if os.fstat(mfd).st_size < size:
                raise FormatError(f"{base}.map: shorter than its {h.nblocks} records")
            self.mm = mmap.mmap(mfd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(mfd)
        self.nblocks = h.nblocks
        body = memoryview(self.mm)[fmt.HEADER_SIZE : size]
        # q[2b + 1]: block b's (generation << 2) | state; u[4b]: its cur CRC, u[4b + 1]: pend
        self.q = body.cast("Q")
        self.u = body.cast("I")
        body.release()
        try:
            for k in range(max(1, -(-h.nblocks // fmt.SEGMENT_BLOCKS))):
                path = base + ".data" + (f".{k}" if k else "")
                self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            self.close()
            raise

    def state(self, b: int) -> int:
        return self.q[2 * b + 1] & fmt.STATE_MASK if b < self.nblocks else fmt.ABSENT

    def pread_into(self, b: int, out: memoryview) -> None:
        n = len(out) // BLOCK_SIZE
        done = 0
        while done < n:
            k, rel = divmod(b + done, fmt.SEGMENT_BLOCKS)
            take = min(n - done, fmt.SEGMENT_BLOCKS - rel)
            view = out[done * BLOCK_SIZE : (done + take) * BLOCK_SIZE]
            off = fmt.HEADER_SIZE + rel * BLOCK_SIZE
            while view:
                got = os.preadv(self.fds[k], [view], off)
                if got <= 0:  # files are sized: a short file reads as zeros, as the owner's
                    view[:] = bytes(len(view))
                    break
                view, off = view[got:], off + got
            done += take

    def verify(self, b: int, n: int, data: bytes | memoryview) -> None:
        u = self.u
        if n == 1:
            got = crc32c(data)
            if got == u[4 * b] or got == u[4 * b + 1]:
                return
        view = memoryview(data)
        for i in range(n):
            got = crc32c(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            if got != u[4 * (b + i)] and got != u[4 * (b + i) + 1]:
                raise ChecksumError(
                    f"checksum mismatch in block {b + i} (offset {(b + i) * BLOCK_SIZE}, "
                    f"layer {self.id})",
                    blocks=[b + i],
                )

    def close(self) -> None:
        for v in (getattr(self, "q", None), getattr(self, "u", None)):
            if v is not None:
                v.release()
        if getattr(self, "mm", None) is not None:
            self.mm.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class ReplicaReader:
    """Reads of one replica's current data (its head and the layers below), read-only."""

    def __init__(
        self, directory: str, meta: dict[str, Any], chain: list[_Layer], st: os.stat_result
    ) -> None:
        self.directory = directory
        self._meta = meta
        self._chain = chain  # head first
        self._meta_stat = st

    @classmethod
    def open(cls, directory: str) -> ReplicaReader:
        path = os.path.join(directory, META_FILE)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                meta = fmt.decode_meta(f.read(), path)
        except FileNotFoundError:
            raise NotFound(f"no replica in {directory}") from None
        chain: list[_Layer] = []
        try:
            lid: Any = meta["head"]
            while lid is not None:
                chain.append(_Layer(directory, int(lid)))
                lid = meta["layers"][str(lid)]["parent"]
        except BaseException:
            for layer in chain:
                layer.close()
            raise
        return cls(directory, meta, chain, st)

    def identity(self) -> dict[str, Any]:
        return host_identity(self.directory)

    @property
    def size(self) -> int:
        return int(self._meta["size"])

    @property
    def epoch(self) -> int:
        return int(self._meta["epoch"])

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """The bytes of [offset, offset + length), 4 KiB-aligned, every block verified.
        Raises ChecksumError (as the owner's reads do), InvalidArgument for a range that is
        unaligned or beyond the size this reader was opened with, OSError when a file cannot
        be read."""
        if offset % BLOCK_SIZE or length % BLOCK_SIZE or offset < 0 or length < 0:
            raise InvalidArgument(f"read [{offset}, +{length}) is not 4 KiB-aligned")
        if offset + length > self.size:
            raise InvalidArgument(f"read [{offset}, +{length}) beyond the size {self.size}")
        lba, n = offset // BLOCK_SIZE, length // BLOCK_SIZE
        chain = self._chain
        head = chain[0]
        if len(chain) == 1 and lba + n <= head.nblocks:  # no snapshots: one layer to look at
            q, i = head.q, 2 * lba + 1
            if n == 1 or all(q[i + 2 * j] & fmt.STATE_MASK == fmt.DATA for j in range(n)):
                if q[i] & fmt.STATE_MASK != fmt.DATA:
                    return _ZERO_BLOCK  # one block, a hole or zeroed
                seg, rel = divmod(lba, fmt.SEGMENT_BLOCKS)
                if rel + n <= fmt.SEGMENT_BLOCKS:  # the common case: one pread, no copies
                    data = os.pread(head.fds[seg], length, fmt.HEADER_SIZE + rel * BLOCK_SIZE)
                    if len(data) == length:
                        head.verify(lba, n, data)
                        return data
        # the general case: each block from the nearest layer that has it, in runs
        out = bytearray(length)
        mv = memoryview(out)
        j = 0
        while j < n:
            layer = self._source(lba + j)
            k = j + 1
            while k < n and self._source(lba + k) is layer:
                k += 1
            if layer is not None:
                view = mv[j * BLOCK_SIZE : k * BLOCK_SIZE]
                layer.pread_into(lba + j, view)
                layer.verify(lba + j, k - j, view)
            j = k
        return out

    def _source(self, b: int) -> _Layer | None:
        """The layer holding block ``b``'s data, or None when it reads as zeros."""
        for layer in self._chain:
            st = layer.state(b)
            if st == fmt.DATA:
                return layer
            if st == fmt.ZERO:
                return None
        return None

    def changed(self) -> bool:
        """Whether the replica's metadata file was replaced since this reader opened it
        (every metadata change is an atomic rename: a new inode)."""
        try:
            st = os.stat(os.path.join(self.directory, META_FILE))
        except OSError:
            return True
        return (st.st_ino, st.st_mtime_ns) != (self._meta_stat.st_ino, self._meta_stat.st_mtime_ns)

    def close(self) -> None:
        for layer in self._chain:
            layer.close()
        self._chain = []
