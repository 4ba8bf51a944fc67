"""One layer of a replica: a sparse data file and an mmap'd block map.

A replica is a chain of layers (head on top, snapshots below). The data file holds block
``b`` at ``HEADER_SIZE + b * 4096``; the map file holds one 16-byte record per block at
``HEADER_SIZE + b * 16`` (see ``format.RECORD``). Both are sparse: space follows data.

RAM: the map is file-backed (mmap), paged in on use and evictable; the only per-size
anonymous memory is one byte per map page (per 256 blocks = 1 MiB of volume) for the
layers that take writes, i.e. 1 MiB per TiB. Called only by ``file_store``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import FormatError, InvalidArgument, NoSpace, ReplicaIOError
from cargohold.store import format as fmt

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

if sys.byteorder != "little":  # pragma: no cover - the scalar map views assume it
    raise ImportError("the replica store's block maps are little-endian; this host is not")

SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_MERGE_CHUNK = 1 << 16  # blocks per step of a merge (256 MiB of volume)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
MAX_IOV = 512  # buffers per pwritev (Linux allows IOV_MAX = 1024)


def check_write_chunk(cap: int) -> None:
    """A cap for ``pieces``: 0 or a positive multiple of the block."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0 or cap % BLOCK_SIZE:
        raise InvalidArgument(f"write chunk {cap!r}: 0 or a multiple of {BLOCK_SIZE} bytes")


def pieces(lba: int, bufs: list[memoryview], cap: int) -> Iterator[tuple[int, list[memoryview]]]:
    """Adjacent whole-block buffers from block ``lba`` cut into pieces of at most ``cap``
    bytes (a multiple of the block; 0: no cap) -> (first block, buffers) per piece.

    The store's large writes go to the page cache in pieces because the kernel sizes the
    folios a buffered write creates by the write's length: a 1 MiB ``pwrite`` leaves a
    1 MiB folio, and every later 4 KiB write into it walks all its buffer heads (ext4 on
    Linux 6.18: 12-33 µs of system time against 4-8 µs in 64-128 KiB folios;
    docs/benchmarks.md, "Replica server: large folios")."""
    total = sum(len(b) for b in bufs)
    if not cap or total <= cap:
        yield lba, bufs
        return
    piece: list[memoryview] = []
    room = cap
    for b in bufs:
        pos = 0
        while pos < len(b):
            take = min(room, len(b) - pos)
            piece.append(b if take == len(b) else b[pos : pos + take])
            pos += take
            room -= take
            if not room:
                yield lba, piece
                lba += cap // BLOCK_SIZE
                piece, room = [], cap
    if piece:
        yield lba, piece


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Release the space of a byte range (it reads as zeros afterwards)."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def io_error(e: OSError, what: str) -> Exception:
    """Map an OSError of the data path onto the request-error tree."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on the replica's disk")
    return ReplicaIOError(f"{what}: {e.strerror or e}")


def sync_fds(fds: list[int]) -> None:
    """fdatasync and close each descriptor (all are closed even when one sync fails)."""
    err: OSError | None = None
    for fd in fds:
        try:
            os.fdatasync(fd)
        except OSError as e:
            err = err or e
        finally:
            os.close(fd)
    if err is not None:
        raise io_error(err, "flush")


def data_path(directory: str, layer_id: int, segment: int = 0) -> str:
    base = os.path.join(directory, f"layer-{layer_id:06d}.data")
    return base if segment == 0 else f"{base}.{segment}"


def map_path(directory: str, layer_id: int) -> str:
    return os.path.join(directory, f"layer-{layer_id:06d}.map")


def file_names(layer_id: int, nblocks: int) -> set[str]:
    """Every file name a layer of ``nblocks`` owns (for cleaning up leftovers)."""
    segs = max(1, -(-nblocks // fmt.SEGMENT_BLOCKS))
    names = {f"layer-{layer_id:06d}.map"}
    names.update(os.path.basename(data_path("", layer_id, k)) for k in range(segs))
    return names


def _segment_count(nblocks: int) -> int:
    return max(1, -(-nblocks // fmt.SEGMENT_BLOCKS))


def _segment_bytes(nblocks: int, k: int) -> int:
    blocks = min(fmt.SEGMENT_BLOCKS, nblocks - k * fmt.SEGMENT_BLOCKS)
    return fmt.HEADER_SIZE + max(0, blocks) * BLOCK_SIZE


class Layer:
    """A layer's files, opened read-write, with numpy views over its block map."""

    def __init__(
        self,
        directory: str,
        layer_id: int,
        data_fds: list[int],
        map_fd: int,
        readonly: bool = False,
    ) -> None:
        self.directory = directory
        self.id = layer_id
        self.data_fds = data_fds
        self.map_fd = map_fd
        self.readonly = readonly  # opened by a reader beside the owner (store.reader)
        self._page_alloc: np.ndarray | None = None  # 1 = map page backed by disk space
        self._map_view()

    @property
    def data_fd(self) -> int:
        return self.data_fds[0]

    # --- life cycle --------------------------------------------------------------
    @staticmethod
    def _new_segment(directory: str, layer_id: int, luuid: bytes, k: int, nblocks: int) -> int:
        path = data_path(directory, layer_id, k)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, fmt.encode_data_header(luuid, k), 0)
            os.ftruncate(fd, _segment_bytes(nblocks, k))
            os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        return fd

    @classmethod
    def create(
        cls,
        directory: str,
        layer_id: int,
        nblocks: int,
        generation: int,
        seen: int = 0,
        *,
        durable: int = 0,
        boot_id: bytes | None = None,
        power_loss: bool = False,
    ) -> Layer:
        """A new layer, its files synced; ``durable``, ``boot_id`` and ``power_loss`` go in
        its header (a new head carries them from the old one: ``fmt.MapHeader``)."""
        luuid = fmt.new_uuid()
        mpath = map_path(directory, layer_id)
        fds: list[int] = []
        mfd = -1
        try:
            for k in range(_segment_count(nblocks)):
                fds.append(cls._new_segment(directory, layer_id, luuid, k, nblocks))
            mfd = os.open(mpath, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            hdr = fmt.MapHeader(
                nblocks,
                luuid,
                generation,
                clean=False,
                seen=seen,
                durable=durable,
                boot_id=boot_id,
                power_loss=power_loss,
            )
            os.pwrite(mfd, fmt.encode_map_header(hdr), 0)
            os.ftruncate(mfd, fmt.HEADER_SIZE + nblocks * fmt.RECORD_SIZE)
            os.fsync(mfd)
        except OSError as e:
            for fd in [*fds, mfd]:
                if fd >= 0:
                    os.close(fd)
            for name in file_names(layer_id, nblocks):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass
            raise io_error(e, "create layer") from None
        return cls(directory, layer_id, fds, mfd)

    @classmethod
    def open(cls, directory: str, layer_id: int, readonly: bool = False) -> Layer:
        """Open an existing layer; ``readonly``: descriptors and map for reading only, for a
        reader in another process than the replica server that owns the layer."""
        mpath = map_path(directory, layer_id)
        mode = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            mfd = os.open(mpath, mode)
        except FileNotFoundError as e:
            raise FormatError(f"layer {layer_id}: missing file {e.filename}") from None
        fds: list[int] = []
        try:
            h = fmt.decode_map_header(os.pread(mfd, fmt.HEADER_SIZE, 0), mpath)
            want = fmt.HEADER_SIZE + h.nblocks * fmt.RECORD_SIZE
            if os.fstat(mfd).st_size < want:
                raise FormatError(f"{mpath}: {os.fstat(mfd).st_size} bytes, expected {want}")
            for k in range(_segment_count(h.nblocks)):
                dpath = data_path(directory, layer_id, k)
                try:
                    fd = os.open(dpath, mode)
                except FileNotFoundError:
                    raise FormatError(f"layer {layer_id}: missing file {dpath}") from None
                fds.append(fd)
                duuid, seg = fmt.decode_data_header(os.pread(fd, fmt.HEADER_SIZE, 0), dpath)
                if duuid != h.layer_uuid or seg != k:
                    raise FormatError(f"{dpath}: belongs to another layer or segment")
        except BaseException:
            for fd in [*fds, mfd]:
                os.close(fd)
            raise
        return cls(directory, layer_id, fds, mfd, readonly)

    def _map_view(self) -> None:
        size = os.fstat(self.map_fd).st_size
        prot = mmap.PROT_READ if self.readonly else mmap.PROT_READ | mmap.PROT_WRITE
        self.mm = mmap.mmap(self.map_fd, size, mmap.MAP_SHARED, prot)
        h = fmt.decode_map_header(self.mm[: fmt.HEADER_SIZE], map_path(self.directory, self.id))
        self.nblocks = h.nblocks
        self.uuid = h.layer_uuid
        self.recs = np.frombuffer(
            self.mm, dtype=fmt.RECORD, count=h.nblocks, offset=fmt.HEADER_SIZE
        )
        self.cur = self.recs["cur"]
        self.pend = self.recs["pend"]
        self.meta = self.recs["meta"]
        # scalar views for one-block I/O, where numpy's per-call cost would dominate:
        # q[2b + 1] is block b's meta; u[4b] its cur, u[4b + 1] its pend; hq[8] the generation
        body = memoryview(self.mm)[fmt.HEADER_SIZE : fmt.HEADER_SIZE + h.nblocks * fmt.RECORD_SIZE]
        self.q = body.cast("Q")
        self.u = body.cast("I")
        self.hq = memoryview(self.mm)[: fmt.HEADER_SIZE].cast("Q")
        body.release()

    def _unmap(self) -> None:
        del self.cur, self.pend, self.meta, self.recs
        for v in (self.q, self.u, self.hq):
            v.release()
        try:
            self.mm.close()
        except BufferError:
            # a view is still alive somewhere (say, in a traceback a caller keeps): the
            # mapping goes away with the last view; the descriptors are closed regardless
            pass

    def grow(self, nblocks: int) -> None:
        if nblocks <= self.nblocks:
            return
        had = len(self.data_fds)
        try:
            os.ftruncate(self.map_fd, fmt.HEADER_SIZE + nblocks * fmt.RECORD_SIZE)
            for k in range(had, _segment_count(nblocks)):
                self.data_fds.append(
                    self._new_segment(self.directory, self.id, self.uuid, k, nblocks)
                )
            for k in range(had):
                os.ftruncate(self.data_fds[k], _segment_bytes(nblocks, k))
        except OSError as e:
            for k in range(had, len(self.data_fds)):  # undo new segments; old sizes are harmless
                os.close(self.data_fds[k])
                with contextlib.suppress(OSError):
                    os.unlink(data_path(self.directory, self.id, k))
            del self.data_fds[had:]
            raise io_error(e, "expand") from None
        old = fmt.decode_map_header(self.mm[: fmt.HEADER_SIZE])
        self._unmap()
        new = fmt.encode_map_header(replace(old, nblocks=nblocks, clean=False))
        os.pwrite(self.map_fd, new, 0)
        os.fsync(self.map_fd)
        self._page_alloc = None
        self._map_view()

    def close(self) -> None:
        self._unmap()
        for fd in self.data_fds:
            os.close(fd)
        os.close(self.map_fd)

    def unlink(self) -> None:
        for name in file_names(self.id, self.nblocks):
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass

    # --- header fields that change while running -------------------------------------
    @property
    def generation(self) -> int:
        return self.hq[fmt.MAP_GEN_OFFSET // 8]

    @generation.setter
    def generation(self, gen: int) -> None:
        self.hq[fmt.MAP_GEN_OFFSET // 8] = gen

    @property
    def seen(self) -> int:
        return self.hq[fmt.MAP_SEEN_OFFSET // 8]

    @seen.setter
    def seen(self, gen: int) -> None:
        self.hq[fmt.MAP_SEEN_OFFSET // 8] = gen

    @property
    def durable(self) -> int:
        """Complete through at the last completed FLUSH (0 where ``boot_id`` is None)."""
        return self.hq[fmt.MAP_DURABLE_OFFSET // 8] if self._flag(fmt.MAP_FLAG_FIELDS) else 0

    @durable.setter
    def durable(self, gen: int) -> None:
        self.hq[fmt.MAP_DURABLE_OFFSET // 8] = gen

    @property
    def boot_id(self) -> bytes | None:
        """The boot id of the kernel that last opened the store; None in a header whose
        writer did not keep it (older code: docs/formats/replica-store.md, "Version")."""
        if not self._flag(fmt.MAP_FLAG_FIELDS):
            return None
        return bytes(self.mm[fmt.MAP_BOOT_OFFSET : fmt.MAP_BOOT_OFFSET + 16])

    @boot_id.setter
    def boot_id(self, value: bytes) -> None:
        """Store the boot id and mark the header's durable and boot id as kept (the caller
        has stored ``durable`` first)."""
        self.mm[fmt.MAP_BOOT_OFFSET : fmt.MAP_BOOT_OFFSET + 16] = value
        self._set_flag(fmt.MAP_FLAG_FIELDS, True)

    @property
    def clean(self) -> bool:
        return self._flag(fmt.MAP_FLAG_CLEAN)

    @clean.setter
    def clean(self, value: bool) -> None:
        self._set_flag(fmt.MAP_FLAG_CLEAN, value)

    @property
    def power_loss(self) -> bool:
        return self._flag(fmt.MAP_FLAG_POWER_LOSS)

    @power_loss.setter
    def power_loss(self, value: bool) -> None:
        self._set_flag(fmt.MAP_FLAG_POWER_LOSS, value)

    def _flag(self, bit: int) -> bool:
        return bool(struct.unpack_from("<I", self.mm, fmt.MAP_FLAGS_OFFSET)[0] & bit)

    def _set_flag(self, bit: int, value: bool) -> None:
        (flags,) = struct.unpack_from("<I", self.mm, fmt.MAP_FLAGS_OFFSET)
        flags = flags | bit if value else flags & ~bit
        struct.pack_into("<I", self.mm, fmt.MAP_FLAGS_OFFSET, flags)

    # --- space ---------------------------------------------------------------------
    def ensure_map_space(self, lba: int, n: int) -> None:
        """Back the map pages of [lba, lba+n) with disk space before storing into them.

        A store into an mmap'd hole on a full disk would kill the process with SIGBUS;
        allocating first turns that into a clean ENOSPC for this one request.
        """
        first = lba // fmt.RECORDS_PER_PAGE
        last = (lba + n - 1) // fmt.RECORDS_PER_PAGE
        pa = self._page_alloc
        if pa is None:
            pa = self._page_alloc = self._scan_page_alloc()
        if first == last:
            if pa[first]:
                return
        elif pa[first : last + 1].all():
            return
        try:
            os.posix_fallocate(
                self.map_fd,
                fmt.HEADER_SIZE + first * 4096,
                (last - first + 1) * 4096,
            )
        except OSError as e:
            raise io_error(e, "block map") from None
        pa[first : last + 1] = 1

    def _scan_page_alloc(self) -> np.ndarray:
        npages = (self.nblocks + fmt.RECORDS_PER_PAGE - 1) // fmt.RECORDS_PER_PAGE
        pa = np.zeros(npages, dtype=np.uint8)
        for a, b in self.record_ranges(0, self.nblocks):
            pa[
                a // fmt.RECORDS_PER_PAGE : (b + fmt.RECORDS_PER_PAGE - 1) // fmt.RECORDS_PER_PAGE
            ] = 1
        return pa

    def record_ranges(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Block ranges within [lo, hi) whose map records are backed by disk (may be set).

        Uses SEEK_DATA/SEEK_HOLE on the map file, so the cost follows what was written,
        not the size of the volume.
        """
        start = fmt.HEADER_SIZE + lo * fmt.RECORD_SIZE
        end = fmt.HEADER_SIZE + hi * fmt.RECORD_SIZE
        pos = start
        while pos < end:
            try:
                d = os.lseek(self.map_fd, pos, SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return
                raise
            if d >= end:
                return
            h = os.lseek(self.map_fd, d, SEEK_HOLE)
            a = max(lo, (d - fmt.HEADER_SIZE) // fmt.RECORD_SIZE)
            b = min(hi, -(-(h - fmt.HEADER_SIZE) // fmt.RECORD_SIZE))
            if b > a:
                yield a, b
            pos = h

    def has_records(self, lo: int, hi: int) -> bool:
        return next(self.record_ranges(lo, hi), None) is not None

    def data_bytes(self) -> int:
        """Disk space taken by this layer's block data."""
        used = sum(os.fstat(fd).st_blocks * 512 for fd in self.data_fds)
        return max(0, used - fmt.HEADER_SIZE * len(self.data_fds))

    def map_bytes(self) -> int:
        return os.fstat(self.map_fd).st_blocks * 512

    # --- block I/O (split where a range crosses a segment boundary) -----------------------
    def _spans(self, lba: int, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(fd, file offset, byte offset into the caller's buffer, bytes) per segment."""
        done = 0
        while done < n:
            k, rel = divmod(lba + done, fmt.SEGMENT_BLOCKS)
            take = min(n - done, fmt.SEGMENT_BLOCKS - rel)
            yield (
                self.data_fds[k],
                fmt.HEADER_SIZE + rel * BLOCK_SIZE,
                done * BLOCK_SIZE,
                take * BLOCK_SIZE,
            )
            done += take

    def pwrite(self, lba: int, data: memoryview) -> None:
        if len(data) == BLOCK_SIZE:  # one block, in one segment: no span walk
            k, rel = divmod(lba, fmt.SEGMENT_BLOCKS)
            off = fmt.HEADER_SIZE + rel * BLOCK_SIZE
            done = os.pwrite(self.data_fds[k], data, off)
            if done < BLOCK_SIZE:
                self.pwrite_bytes(k, off, data, done)
            return
        for fd, off, pos, length in self._spans(lba, len(data) // BLOCK_SIZE):
            done = 0
            while done < length:
                done += os.pwrite(fd, data[pos + done : pos + length], off + done)

    def pwritev(self, lba: int, bufs: list[memoryview]) -> None:
        """``pwrite`` of adjacent buffers (whole blocks each) from ``lba``: one system call
        when they lie in one segment file (at most ``MAX_IOV`` of them)."""
        n = sum(len(b) for b in bufs) // BLOCK_SIZE
        k, rel = divmod(lba, fmt.SEGMENT_BLOCKS)
        if rel + n > fmt.SEGMENT_BLOCKS or len(bufs) > MAX_IOV:
            for b in bufs:
                self.pwrite(lba, b)
                lba += len(b) // BLOCK_SIZE
            return
        off = fmt.HEADER_SIZE + rel * BLOCK_SIZE
        done = os.pwritev(self.data_fds[k], bufs, off)
        if done == n * BLOCK_SIZE:
            return
        for b in bufs:  # a short write (rare): the rest one buffer at a time
            if done >= len(b):
                done -= len(b)
            else:
                self.pwrite_bytes(k, off, b, done)
                done = 0
            off += len(b)

    def pwrite_bytes(self, k: int, off: int, b: memoryview, start: int) -> None:
        """The bytes of ``b`` from ``start`` at ``off`` (+ ``start``) of segment ``k``."""
        while start < len(b):
            start += os.pwrite(self.data_fds[k], b[start:], off + start)

    def pread_into(self, lba: int, out: memoryview) -> None:
        for fd, off, pos, length in self._spans(lba, len(out) // BLOCK_SIZE):
            done = 0
            while done < length:
                got = os.preadv(fd, [out[pos + done : pos + length]], off + done)
                if got == 0:  # beyond EOF cannot happen (files are sized); be safe
                    out[pos + done : pos + length] = bytes(length - done)
                    break
                done += got

    def punch(self, lba: int, n: int) -> None:
        for fd, off, _, length in self._spans(lba, n):
            punch_hole(fd, off, length)

    def copy_from(self, other: Layer, lba: int, n: int) -> None:
        """Copy blocks from another layer's data file (in the kernel; reflink where possible)."""
        for (sfd, off, _, length), (dfd, _, _, _) in zip(
            other._spans(lba, n), self._spans(lba, n), strict=True
        ):
            done = 0
            while done < length:
                got = os.copy_file_range(sfd, dfd, length - done, off + done, off + done)
                if got == 0:
                    raise ReplicaIOError(f"copy of blocks {lba}+{n} stopped short")
                done += got

    def absorb(self, parent: Layer) -> Iterator[None]:
        """Copy into this layer what ``parent`` has and this layer lacks, so ``parent`` can
        go (snapshot deletion). Reads see the same content before, during and after: data
        is copied before the records that point at it, and synced before them: a power
        loss mid-fold finds no record without its data (in a layer below the head nothing
        would catch that: docs/formats/replica-store.md). Yields between chunks."""
        st_mask = np.uint64(fmt.STATE_MASK)
        for a, b in list(parent.record_ranges(0, parent.nblocks)):
            for lo in range(a, b, _MERGE_CHUNK):
                hi = min(b, lo + _MERGE_CHUNK)
                sm = parent.meta[lo:hi]
                dm = self.meta[lo:hi]
                ss = sm & st_mask
                # also carry "touched" markers (ABSENT with a generation) for delta queries
                take = (sm != 0) & ((dm & st_mask) == fmt.ABSENT)
                if take.any():
                    self.ensure_map_space(lo, hi - lo)
                    copied = False
                    for s, e in _runs(take & (ss == fmt.DATA)):
                        try:
                            self.copy_from(parent, lo + s, e - s)
                        except OSError as err:
                            raise io_error(err, "merge snapshot") from None
                        copied = True
                    if copied:
                        try:
                            for fd in self.data_fds:
                                os.fdatasync(fd)
                        except OSError as err:
                            raise io_error(err, "merge snapshot") from None
                    idx = np.flatnonzero(take)
                    self.cur[lo + idx] = parent.cur[lo + idx]
                    self.pend[lo + idx] = parent.pend[lo + idx]
                    gen = np.maximum(sm[idx] >> np.uint64(2), dm[idx] >> np.uint64(2))
                    self.meta[lo + idx] = (gen << np.uint64(fmt.GEN_SHIFT)) | ss[idx]
                del sm, dm, ss
                yield
        self.sync()

    def sync_handles(self) -> list[int]:
        """Duplicated descriptors of every file of this layer, for a sync elsewhere."""
        return [os.dup(fd) for fd in (*self.data_fds, self.map_fd)]

    def sync(self) -> None:
        for fd in self.data_fds:
            os.fdatasync(fd)
        os.fdatasync(self.map_fd)


def _runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) of the True runs of a boolean array."""
    if not mask.any():
        return
    d = np.diff(np.concatenate(([False], mask, [False])).astype(np.int8))
    yield from zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True)
