"""Reads and writes of a file-store replica's blocks: ``FileStore``'s data path
(file_store.py), never used alone.

A read resolves each block through the chain of layers, head first, and verifies it against
the CRC32C in its layer's map (``ChecksumError`` names the block). A write goes to the head
layer in the crash-safe order of docs/formats/replica-store.md (``_put``): a block written
after the last FLUSH reads back as its old or its new content, never a mix, and its checksum
always verifies. A FLUSH syncs the layers written since the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from crc32c import crc32c

from cargohold.constants import BLOCK_SIZE, STORE_WRITE_CHUNK
from cargohold.errors import ChecksumError, Unsupported
from cargohold.protocol.extent_stream import KIND_DATA
from cargohold.store import format as fmt
from cargohold.store.base import (
    DATA,
    HOLE,
    ZERO,
    ZERO_CRC,
    block_crcs,
    check_range,
    check_size,
    not_applied,
    runs,
)
from cargohold.store.layer import MAX_IOV, Layer, io_error, pieces, sync_fds
from cargohold.store.layer_tree import LayerTree

_SRC_HOLE = -1
_SRC_ZERO = -2


class BlockIO(LayerTree):
    """The reads and writes of a ``FileStore``."""

    write_chunk: int = STORE_WRITE_CHUNK  # bytes per pwrite of a large write (layer.pieces)

    # --- reads ------------------------------------------------------------------------
    def _chain_of(self, snapshot: str | None) -> list[Layer]:
        if snapshot is None:
            return self._chain
        return [self._layers[lid] for lid in self._ancestry(self._snapshot_layer(snapshot))]

    def _sources(self, lba: int, n: int, chain: list[Layer]) -> np.ndarray:
        """Per block: depth in the chain of the layer holding its data, or HOLE/ZERO."""
        src = np.full(n, _SRC_HOLE, dtype=np.int16)
        for depth, layer in enumerate(chain):
            m = min(n, layer.nblocks - lba)
            if m <= 0:
                continue
            st = layer.meta[lba : lba + m] & fmt.STATE_MASK
            open_ = src[:m] == _SRC_HOLE
            head = src[:m]
            head[open_ & (st == fmt.DATA)] = depth
            head[open_ & (st == fmt.ZERO)] = _SRC_ZERO
            if depth + 1 < len(chain) and not (src == _SRC_HOLE).any():
                break
        return src

    def resolve(self, lba: int, n: int, snapshot: str | None = None) -> np.ndarray:
        src = self._sources(lba, n, self._chain_of(snapshot))
        out = np.full(n, HOLE, dtype=np.uint8)
        out[src >= 0] = DATA
        out[src == _SRC_ZERO] = ZERO
        return out

    def read(self, offset: int, length: int, snapshot: str | None = None) -> bytearray:
        lba, n = check_range(offset, length, self.size)
        chain = self._chain_of(snapshot)
        if n == 1:
            return self._read_one(lba, chain)
        out = bytearray(length)
        if n == 0:
            return out
        mv = memoryview(out)
        head = chain[0]
        if len(chain) == 1 and head.nblocks >= lba + n:
            st = head.meta[lba : lba + n] & fmt.STATE_MASK
            if (st == fmt.DATA).all():
                head.pread_into(lba, mv)
                self._verify(head, lba, None, out)
            else:
                mask = st == fmt.DATA
                for a, b in runs(mask):
                    head.pread_into(lba + a, mv[a * BLOCK_SIZE : b * BLOCK_SIZE])
                if mask.any():
                    self._verify(head, lba, mask, out)
        else:
            src = self._sources(lba, n, chain)
            for depth in np.unique(src[src >= 0]).tolist():
                layer = chain[depth]
                mask = src == depth
                for a, b in runs(mask):
                    layer.pread_into(lba + a, mv[a * BLOCK_SIZE : b * BLOCK_SIZE])
                self._verify(layer, lba, mask, out)
        self.counters["reads"] += 1
        self.counters["read_bytes"] += length
        return out

    def checksums(self, offset: int, length: int, snapshot: str | None = None) -> np.ndarray:
        lba, n = check_range(offset, length, self.size)
        chain = self._chain_of(snapshot)
        out = np.full(n, ZERO_CRC, dtype="<u4")
        if n == 0:
            return out
        src = self._sources(lba, n, chain)
        for depth in np.unique(src[src >= 0]).tolist():
            idx = np.flatnonzero(src == depth)
            out[idx] = chain[depth].cur[lba + idx]
        return out

    def _verify(self, layer: Layer, lba: int, mask: np.ndarray | None, out: bytearray) -> None:
        mv = memoryview(out)
        if mask is None:
            n = len(out) // BLOCK_SIZE
            got = block_crcs(mv)
            cur = layer.cur[lba : lba + n].copy()  # copies: an exception must not pin the map
            pend = layer.pend[lba : lba + n].copy()
            bad = (got != cur) & (got != pend)
            idx = None
        else:
            idx = np.flatnonzero(mask)
            got = np.fromiter(
                (
                    int(block_crcs(mv[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])[0])
                    for i in idx.tolist()
                ),
                dtype="<u4",
                count=idx.size,
            )
            bad = (got != layer.cur[lba + idx]) & (got != layer.pend[lba + idx])
        if bad.any():
            where = np.flatnonzero(bad) if idx is None else idx[bad]
            blocks = [lba + int(i) for i in where[:64]]
            self.counters["checksum_errors"] += int(bad.sum())
            raise ChecksumError(
                f"checksum mismatch in block {blocks[0]} (offset {blocks[0] * BLOCK_SIZE}, "
                f"layer {self._layer_name(layer.id)}); {int(bad.sum())} bad block(s) in this read",
                blocks=blocks,
                layer=self._layer_name(layer.id),
            )

    # --- writes -----------------------------------------------------------------------
    def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        fua: bool = False,
        generation: int | None = None,
    ) -> int:
        one: list[int | Exception] = []
        if self._write_blocks([(offset, data, generation)], 0, one):  # the usual one block
            got = one[0]
            if isinstance(got, Exception):
                raise got
        else:
            mv = memoryview(data)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            lba, n = check_range(offset, len(mv), self.size)
            if n == 0:  # takes its number (ReplicaStore._empty)
                return self._empty(generation)
            self._chain[0].ensure_map_space(lba, n)
            g, contiguous = self._claim(generation)
            self._put(lba, mv, g)
            self._complete(g, contiguous)
            counters = self.counters
            counters["writes"] += 1
            counters["written_bytes"] += len(mv)
        if fua:
            self.flush()
        return self._gen

    def _write_blocks(
        self, writes: Sequence[tuple[int, Any, int | None]], i: int, out: list[int | Exception]
    ) -> int:
        """The short way of ``write`` and ``write_many`` for lone one-block writes (random
        4 KiB writes: what a replica server is sent most), from ``writes[i]`` on, in one
        loop: each whole block inside the replica, numbered above every one seen, in an epoch
        the history already records (``_epoch_recorded``), not adjacent to the next
        (a run: one ``pwritev``, ``_write_run``). Each is claimed (``_claim_next``), stored
        by ``_put`` (its crash-safe order: mark, announce the checksum, the data, commit) and
        completed in order, as ``write`` would: no per-write checks beyond these, counters
        once per call; its outcome appended to ``out``. Stops at the first write that does
        not qualify, and after the first that fails (its exception in ``out``; claimed,
        never completed). -> the index it stopped at."""
        if not self._epoch_recorded():  # a new epoch's first mutation: _claim records it
            return i
        head = self._chain[0]
        k, size, seen = len(writes), self.size, self._seen
        j, failed = i, False
        while j < k:
            offset, data, g = writes[j]
            try:
                mv = memoryview(data)
            except TypeError:  # not a buffer: the general way says so
                break
            if (
                type(g) is not int
                or g <= seen
                or offset % BLOCK_SIZE
                or not 0 <= offset < size
                or mv.nbytes != BLOCK_SIZE
                or mv.ndim != 1
                or (j + 1 < k and writes[j + 1][0] == offset + BLOCK_SIZE)
            ):
                break
            if mv.format != "B":
                mv = mv.cast("B")
            lba = offset // BLOCK_SIZE
            try:
                head.ensure_map_space(lba, 1)
            except Exception as e:  # ENOSPC for the block map: this write fails, unclaimed
                out.append(e)
                failed = True
                break
            contiguous = self._claim_next(g)
            seen = g
            try:
                self._put(lba, mv, g)
            except Exception as e:  # the data did not reach the file: claimed, not complete
                out.append(e)
                failed = True
                break
            self._complete(g, contiguous)
            out.append(self._gen)
            j += 1
        if j > i:  # the ones stored, counted once
            counters = self.counters
            counters["writes"] += j - i
            counters["written_bytes"] += (j - i) * BLOCK_SIZE
        return j + 1 if failed else j

    def write_many(self, writes: list[tuple[int, Any, int]]) -> list[int | Exception]:
        """``ReplicaStore.write_many``: each run of adjacent writes (offset + length = the
        next offset) whose generations can all be claimed goes to the head's data file
        with one ``pwritev``, in ``_put``'s crash-safe order for every block of the run
        (all marked and announced, the data, then all committed), each write with its own
        generation, claimed and completed in order; anything else goes one by one. Nothing
        after a failed write is applied (``ReplicaStore.write_many``)."""
        out: list[int | Exception] = []
        i, k = 0, len(writes)
        while i < k:
            if out and isinstance(out[-1], Exception):  # the rest are not applied
                return out + [not_applied(out[-1])] * (k - i)
            offset, data, _ = writes[i]
            end, j = offset + len(data), i + 1
            while j < k and writes[j][0] == end and j - i < MAX_IOV:
                end += len(writes[j][1])
                j += 1
            if j - i == 1:  # alone (random writes): the short way, this one and what follows
                taken = self._write_blocks(writes, i, out)
                if taken > i:
                    i = taken
                    continue
            if j - i > 1 and self._runnable(writes[i:j]):
                try:
                    out += self._write_run(writes[i:j])
                except Exception as e:  # a claim's metadata commit failed: none completed
                    out += [e] * (j - i)
            elif j - i == 1:  # alone (random writes): no slice, no second loop
                try:
                    out.append(self.write(offset, data, generation=writes[i][2]))
                except Exception as e:  # the rest are not applied (above)
                    out.append(e)
            else:
                out += super().write_many(writes[i:j])
            i = j
        return out

    def _runnable(self, run: list[tuple[int, Any, int]]) -> bool:
        """Every write of ``run`` would pass ``write``'s checks: whole blocks inside the
        replica, generations rising above every one seen; its map pages backed."""
        seen = self._seen
        for _, data, g in run:
            n = len(data)
            if not n or n % BLOCK_SIZE or type(g) is not int or g <= seen:
                return False
            seen = g
        offset, end = run[0][0], run[-1][0] + len(run[-1][1])
        if offset % BLOCK_SIZE or end > self.size:
            return False
        try:
            self._chain[0].ensure_map_space(offset // BLOCK_SIZE, (end - offset) // BLOCK_SIZE)
        except Exception:  # ENOSPC: the first write then fails, saying so
            return False
        return True

    def _write_run(self, run: list[tuple[int, Any, int]]) -> list[int | Exception]:
        head = self._chain[0]
        state = np.uint64(fmt.STATE_MASK)
        staged: list[tuple[int, int, memoryview, int, bool, Any, Any]] = []
        for offset, data, generation in run:  # 1 and 2 for every write, in order
            mv = memoryview(data)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            lba, n = offset // BLOCK_SIZE, len(mv) // BLOCK_SIZE
            g, contiguous = self._claim(generation)
            if staged:  # as if the one before were complete: the sequence goes on from it
                contiguous = staged[-1][4] and g == staged[-1][3] + 1
            crcs = block_crcs(mv)
            tag = np.uint64(g << fmt.GEN_SHIFT)
            meta = head.meta[lba : lba + n]
            meta[:] = (meta & state) | tag  # 1. changed at g, state unchanged
            head.pend[lba : lba + n] = crcs  # 2. the new checksum announced
            staged.append((lba, n, mv, g, contiguous, crcs, tag))
        try:  # 3. the data of the whole run
            self._write_data(head, run[0][0] // BLOCK_SIZE, [s[2] for s in staged])
        except OSError as e:  # every write of the run failed: claimed, never completed
            err = io_error(e, f"write at {run[0][0]}")
            return [err] * len(run)
        out: list[int | Exception] = []
        for lba, n, mv, g, contiguous, crcs, tag in staged:
            head.cur[lba : lba + n] = crcs  # 4. committed
            head.meta[lba : lba + n] = tag | np.uint64(fmt.DATA)
            self._complete(g, contiguous)
            self.counters["writes"] += 1
            self.counters["written_bytes"] += len(mv)
            out.append(self._gen)
        self._dirty.add(head.id)
        return out

    def _put(self, lba: int, mv: memoryview, g: int) -> None:
        """Store whole blocks in the head, recorded at generation ``g``, in the crash-safe
        order of docs/formats/replica-store.md."""
        head = self._chain[0]
        n = len(mv) // BLOCK_SIZE
        if n == 1:  # scalar stores: numpy's per-call cost would dominate one block
            crc = crc32c(mv)
            q, u, i = head.q, head.u, 2 * lba + 1
            q[i] = (g << fmt.GEN_SHIFT) | (q[i] & fmt.STATE_MASK)
            u[4 * lba + 1] = crc
            try:
                head.pwrite(lba, mv)
            except OSError as e:
                raise io_error(e, f"write at {lba * BLOCK_SIZE}") from None
            u[4 * lba] = crc
            q[i] = (g << fmt.GEN_SHIFT) | fmt.DATA
            self._dirty.add(head.id)
            return
        crcs = block_crcs(mv)
        tag = np.uint64(g << fmt.GEN_SHIFT)
        meta = head.meta[lba : lba + n]
        # 1. mark the blocks as changed at this generation, state unchanged
        meta[:] = (meta & np.uint64(fmt.STATE_MASK)) | tag
        # 2. announce the new checksum: reads accept the old content or the new one
        head.pend[lba : lba + n] = crcs
        # 3. the data itself
        try:
            self._write_data(head, lba, [mv])
        except OSError as e:
            del meta  # a traceback holding a view of the map would keep it from closing
            raise io_error(e, f"write at {lba * BLOCK_SIZE}") from None
        # 4. commit: the new checksum becomes the current one, the block lives here
        head.cur[lba : lba + n] = crcs
        meta[:] = tag | np.uint64(fmt.DATA)
        self._dirty.add(head.id)

    def _write_data(self, head: Layer, lba: int, bufs: list[memoryview]) -> None:
        """Adjacent buffers into ``head`` from block ``lba``, in pieces of ``write_chunk``
        bytes at most (``layer.pieces``: why)."""
        for at, piece in pieces(lba, bufs, self.write_chunk):
            head.pwritev(at, piece)

    def _read_one(self, lba: int, chain: list[Layer]) -> bytearray:
        """``read`` for one block: walk the chain with scalar loads."""
        out = bytearray(BLOCK_SIZE)
        for layer in chain:
            if lba >= layer.nblocks:
                continue
            state = layer.q[2 * lba + 1] & fmt.STATE_MASK
            if state == fmt.ABSENT:
                continue
            if state == fmt.DATA:
                layer.pread_into(lba, memoryview(out))
                got = crc32c(out)
                if got != layer.u[4 * lba] and got != layer.u[4 * lba + 1]:
                    self._verify(layer, lba, None, out)  # raises, naming the block
            break
        self.counters["reads"] += 1
        self.counters["read_bytes"] += BLOCK_SIZE
        return out

    def write_zeroes(self, offset: int, length: int, generation: int | None = None) -> int:
        lba, n = check_range(offset, length, self.size)
        if n == 0:  # takes its number (ReplicaStore._empty)
            return self._empty(generation)
        self._chain[0].ensure_map_space(lba, n)
        g, contiguous = self._claim(generation)
        self._zero(lba, n, g)
        self._complete(g, contiguous)
        self.counters["zeroes"] += 1
        return self._gen

    def _zero(self, lba: int, n: int, g: int) -> None:
        head = self._chain[0]
        head.meta[lba : lba + n] = np.uint64((g << fmt.GEN_SHIFT) | fmt.ZERO)
        # punch the whole range: also frees data a failed or crash-cut write left behind
        try:
            head.punch(lba, n)
        except OSError as e:
            raise io_error(e, "punch hole") from None
        self._dirty.add(head.id)

    def _import_extents(self, extents: list[Any], g: int) -> None:
        for e in extents:
            self._chain[0].ensure_map_space(e.lba, e.count)
            if e.kind == KIND_DATA:
                self._put(e.lba, e.data, g)
            else:
                self._zero(e.lba, e.count, g)
        self._seen = max(self._seen, g)
        self._chain[0].seen = self._seen

    def flush_handles(self) -> list[int]:
        """Duplicates of the descriptors a FLUSH must sync, for syncing in another thread
        while this one goes on serving (the caller owns and closes them: ``sync_fds``)."""
        fds = []
        for lid in sorted(self._dirty):
            layer = self._layers.get(lid)
            if layer is not None:
                fds += layer.sync_handles()
        self._dirty.clear()
        self.counters["flushes"] += 1
        return fds

    def flush(self) -> None:
        mark = self.durable_mark()  # complete through read before the syncs, stored after
        sync_fds(self.flush_handles())
        self.flushed(mark)

    def expand(self, new_size: int) -> None:
        check_size(new_size)
        if new_size < self.size:
            raise Unsupported(f"shrinking from {self.size} to {new_size} is not supported")
        if new_size == self.size:
            return
        self._chain[0].grow(new_size // BLOCK_SIZE)
        meta = self._draft()
        meta["size"] = new_size
        self._commit(meta)
