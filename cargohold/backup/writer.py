"""BackupWriter: turns a volume's data into chunks, blobs, packs, an index and a manifest.

Made by ``Repository.start_backup``; the caller (the engine's backup operation) calls
``write``/``zero`` with block-aligned ranges, preferably in offset order, then ``commit`` (or
``abort``). The volume is cut on the 4 MiB cell grid: writes to one cell are gathered in a
buffer; when the writer moves on to another cell the buffer becomes one chunk holding the
cell's written, non-zero blocks (all-zero 4 KiB blocks are found with numpy and cost nothing;
written zero blocks clear the parent's map there). Hashing, compression and encryption run in
a thread pool (the C libraries release the GIL); sealed packs are uploaded by a second pool of
``uploads`` threads. Map changes are applied in the order they were asked for.

Nothing a writer stores is read as a backup until commit has written the manifest and then
the catalog entry; abort (or an error in commit) deletes the packs and index it wrote.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cargohold.backup import format as fmt
from cargohold.backup.catalog import BackupInfo
from cargohold.backup.chunk_map import ChunkMap
from cargohold.backup.format import BLOCK, CELL
from cargohold.backup.index import write_index
from cargohold.backup.leases import Lease
from cargohold.backup.packs import PackBuilder
from cargohold.errors import CargoholdError, InvalidArgument, WrongState

if TYPE_CHECKING:
    from cargohold.backup.repository import Repository

log = logging.getLogger(__name__)

COMPRESS_LEVEL = 1
COMPRESS_KEEP = 0.9  # keep the zstd frame only when it is at most 90% of the raw chunk


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, count) of each run of True in a bool array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


@dataclass
class _Cell:
    """A cell's chunk, ready: where its data and zero runs go, its id and blob (None: known)."""

    cell: int
    data: list[tuple[int, int]]
    zeros: list[tuple[int, int]]
    chunk: bytes
    blob: bytes | None
    flags: int
    raw: int


class BackupWriter:
    """Writes one backup. Not thread-safe: one caller thread drives it."""

    def __init__(
        self,
        repo: Repository,
        info: BackupInfo,
        base: ChunkMap,
        lease: Lease,
        known: dict[bytes, fmt.Location],
        indexes: list[str],
    ) -> None:
        self.repo = repo
        self.info = info
        self.map = base
        self.lease = lease
        self._known = known  # the repository's usable index at start (read-only here)
        self._indexes = indexes
        self._new: dict[bytes, fmt.Location] = {}
        self._pool = ThreadPoolExecutor(
            max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="bk-chunk"
        )
        self._up = ThreadPoolExecutor(repo.uploads, thread_name_prefix="bk-upload")
        self._pending: deque[Future[_Cell] | tuple[int, int]] = deque()
        self._uploads: deque[tuple[str, Future[None]]] = deque()
        self._written: list[str] = []  # packs (and the index) this writer stored
        self._pack = PackBuilder()
        self._cell = -1
        self._buf: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._closed = False
        self.bytes_read = 0
        self.bytes_new = 0
        self.chunks_new = 0
        self.chunks_reused = 0

    # --- the caller's side ------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise WrongState(f"backup {self.info.id} is already committed or aborted")

    def _check_range(self, offset: int, length: int) -> None:
        if offset % BLOCK or length % BLOCK or offset < 0 or length < 0:
            raise InvalidArgument(f"backup writes are {BLOCK}-byte aligned, not {offset}+{length}")
        if offset + length > self.info.size:
            raise InvalidArgument(
                f"range {offset}+{length} is beyond the volume's {self.info.size} bytes"
            )

    def _cell_bytes(self, c: int) -> int:
        return min(CELL, self.info.size - c * CELL)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Back up ``data`` at volume ``offset`` (both multiples of 4096)."""
        self._check_open()
        view = memoryview(data).cast("B")
        n = len(view)
        self._check_range(offset, n)
        if not isinstance(data, bytes):  # the caller may reuse its buffer after we return
            view = memoryview(bytes(view))
        try:
            self._write(offset, view)
        except BaseException:  # a target error (NoSpace, ...) ends the backup: nothing recorded
            self.abort()
            raise

    def _write(self, offset: int, view: memoryview) -> None:
        n = len(view)
        self.bytes_read += n
        pos = 0
        while pos < n:
            off = offset + pos
            c = off // CELL
            take = min(n - pos, (c + 1) * CELL - off)
            piece = view[pos : pos + take]
            if take == self._cell_bytes(c) and c != self._cell:  # a whole cell: no copy
                self._flush_cell()
                arr = np.frombuffer(piece, dtype=np.uint8)
                self._submit(c, arr, np.ones(take // BLOCK, dtype=bool))
            else:
                if c != self._cell:
                    self._flush_cell()
                    self._open_cell(c)
                assert self._buf is not None and self._mask is not None
                lo = off - c * CELL
                self._buf[lo : lo + take] = np.frombuffer(piece, dtype=np.uint8)
                self._mask[lo // BLOCK : (lo + take) // BLOCK] = True
            pos += take
        self._drain(block=False)

    def zero(self, offset: int, length: int) -> None:
        """The range reads as zeros in this backup (whatever the parent held there)."""
        self._check_open()
        self._check_range(offset, length)
        if length == 0:
            return
        if self._cell >= 0 and self._mask is not None:
            lo, hi = self._cell * CELL, self._cell * CELL + CELL
            a, b = max(offset, lo), min(offset + length, hi)
            if a < b:
                self._mask[(a - lo) // BLOCK : (b - lo) // BLOCK] = False
        self._pending.append((offset, length))
        try:
            self._drain(block=False)
        except BaseException:
            self.abort()
            raise

    def fragmented_cells(self, limit: int = 16) -> list[tuple[int, int]]:
        """(offset, length) of cells whose map has more than ``limit`` pieces so far; the
        caller may read such cells whole and write them again (one chunk each)."""
        self._drain(block=True)
        return [(c * CELL, self._cell_bytes(c)) for c in self.map.fragmented_cells(limit)]

    # --- cells -> chunks ----------------------------------------------------------------------
    def _open_cell(self, c: int) -> None:
        self._cell = c
        self._buf = np.empty(CELL, dtype=np.uint8)
        self._mask = np.zeros(self._cell_bytes(c) // BLOCK, dtype=bool)

    def _flush_cell(self) -> None:
        if (
            self._cell >= 0
            and self._buf is not None
            and self._mask is not None
            and self._mask.any()
        ):
            nb = len(self._mask)
            self._submit(self._cell, self._buf[: nb * BLOCK], self._mask)
        self._cell, self._buf, self._mask = -1, None, None

    def _submit(self, c: int, arr: np.ndarray, mask: np.ndarray) -> None:
        self._pending.append(self._pool.submit(self._process, c, arr, mask))
        if sum(1 for p in self._pending if isinstance(p, Future)) > 8:
            self._drain(block=True, keep=4)

    def _process(self, c: int, arr: np.ndarray, mask: np.ndarray) -> _Cell:
        """In a pool thread: find zero blocks, cut the chunk, hash, compress, encrypt."""
        nb = len(mask)
        blocks = arr.reshape(nb, BLOCK)
        nonzero = blocks.view(np.uint64).any(axis=1) & mask
        data = runs(nonzero)
        zeros = runs(mask & ~nonzero)
        if not data:
            return _Cell(c, [], zeros, b"", None, 0, 0)
        chunk = arr if nonzero.all() else blocks[nonzero].reshape(-1)
        raw = np.ascontiguousarray(chunk).data.cast("B")
        keys = self.repo.keys
        cid = keys.chunk_id(raw)
        if cid in self._known:
            return _Cell(c, data, zeros, cid, None, 0, len(raw))
        z = fmt.compressor(COMPRESS_LEVEL).compress(raw)
        flags, payload = (fmt.FLAG_ZSTD, z) if len(z) <= COMPRESS_KEEP * len(raw) else (0, raw)
        return _Cell(c, data, zeros, cid, keys.seal_blob(cid, flags, payload), flags, len(raw))

    def _drain(self, block: bool, keep: int = 0) -> None:
        """Apply finished work to the map, in order; with ``block``, wait until ``keep`` remain."""
        while self._pending:
            head = self._pending[0]
            if isinstance(head, tuple):
                self._pending.popleft()
                self.map.clear(*head)
                continue
            if not head.done() and not (block and len(self._pending) > keep):
                break
            self._pending.popleft()
            self._apply(head.result())
        self._check_uploads(block=False)

    def _apply(self, r: _Cell) -> None:
        base = r.cell * CELL
        for first, count in r.zeros:
            self.map.clear(base + first * BLOCK, count * BLOCK)
        if not r.data:
            return
        if r.blob is None or r.chunk in self._new:
            self.chunks_reused += 1
        else:
            self._new[r.chunk] = self._pack.add(r.chunk, r.flags, r.raw, r.blob)
            self.chunks_new += 1
            self.bytes_new += len(r.blob)
            if self._pack.size >= self.repo.pack_bytes:
                self._seal_pack()
        coff = 0
        for first, count in r.data:
            self.map.put(base + first * BLOCK, count * BLOCK, r.chunk, coff)
            coff += count * BLOCK

    # --- packs -> the target ------------------------------------------------------------------
    def _seal_pack(self) -> None:
        pack, self._pack = self._pack, PackBuilder()
        if not pack.entries:
            return
        data = pack.seal(self.repo.keys)
        self._written.append(pack.name)
        self._uploads.append((pack.name, self._up.submit(self.repo.target.put, pack.name, data)))
        while len(self._uploads) > self.repo.uploads + 1:  # bound the memory held by uploads
            self._uploads[0][1].result()
            self._uploads.popleft()

    def _check_uploads(self, block: bool) -> None:
        while self._uploads and (block or self._uploads[0][1].done()):
            fut = self._uploads[0][1]
            fut.result()  # raises the target's error (NoSpace, TargetError, ...)
            self._uploads.popleft()

    # --- the end ------------------------------------------------------------------------------
    def commit(self) -> BackupInfo:
        """Store what remains, then the index, the manifest and the catalog entry."""
        self._check_open()
        try:
            self._flush_cell()
            self._drain(block=True)
            self._seal_pack()
            self._check_uploads(block=True)
            indexes = list(self._indexes)
            if self._new:
                name = write_index(self.repo.target, self.repo.keys, self._new)
                self._written.append(name)
                indexes.append(name)
            if not self.lease.valid(margin=5.0):
                raise WrongState(
                    f"backup {self.info.id}: its lease {self.lease.name} expired before commit "
                    "(GC may have run); nothing was recorded"
                )
            info = BackupInfo(
                **{
                    **self.info.to_dict(),
                    "created": time.time(),
                    "bytes_read": self.bytes_read,
                    "bytes_new": self.bytes_new,
                    "bytes_total": self.map.data_bytes(),
                    "chunks_new": self.chunks_new,
                    "chunks_reused": self.chunks_reused,
                }
            )
            self.repo._record(
                info, indexes, self.map, [n for n in self._written if n.startswith("index/")]
            )
        except BaseException:
            self.abort()
            raise
        self._close()
        return info

    def abort(self) -> None:
        """Drop the backup: nothing is recorded; what was stored is deleted (best effort)."""
        if self._closed:
            return
        self._closed = True
        for p in self._pending:
            if isinstance(p, Future):
                p.cancel()
        self._pending.clear()
        for _, fut in self._uploads:
            with contextlib.suppress(Exception):
                fut.result()
        self._uploads.clear()
        with contextlib.suppress(CargoholdError):
            self.repo.target.delete(self._written)
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._up.shutdown(wait=False, cancel_futures=True)
        self.lease.release()
        self._buf = self._mask = None

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self._closed:
            self.abort()
