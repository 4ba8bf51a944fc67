"""A backup's chunk map: which byte ranges of the volume hold which bytes of which chunk.

The volume is cut on a fixed grid of 4 MiB cells (format.CELL). Every extent lies inside one
cell and says: volume bytes ``[offset, offset+length)`` are bytes ``[coff, coff+length)`` of
chunk ``chunk``. Ranges no extent covers read as zeros. An incremental backup starts from its
parent's map and overrides it (``put`` replaces what lay under the new extent, ``clear`` makes
a range read as zeros), so every backup's map describes the whole volume.

Per cell, the extents are a short sorted list, so an override costs the size of one cell's
list, never the whole map's. The encoding (inside a manifest, compressed) is a table of the
distinct chunk ids and an array of 20-byte extents, sorted; decoding checks every field.
Sans-I/O; the writer builds maps, the reader, GC and verify read them.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from cargohold.backup.format import BLOCK, CELL, ID_SIZE
from cargohold.errors import FormatError, InvalidArgument

EXTENT = np.dtype([("offset", "<u8"), ("length", "<u4"), ("chunk", "<u4"), ("coff", "<u4")])
FRAGMENTED = 16  # extents in one cell beyond which a cell counts as fragmented


class Extent(NamedTuple):
    offset: int
    length: int
    chunk: bytes
    coff: int


class ChunkMap:
    """The chunk map of one backup (mutable while a writer builds it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cells: dict[int, list[Extent]] = {}

    def copy(self, size: int | None = None) -> ChunkMap:
        """A new map with these extents, cut (or grown) to ``size`` when given."""
        out = ChunkMap(self.size)
        out.cells = {c: list(v) for c, v in self.cells.items()}
        if size is not None:
            if size < self.size:
                out.clear(size, self.size - size)
            out.size = size
        return out

    def _check(self, offset: int, length: int) -> None:
        if offset % BLOCK or length % BLOCK or length <= 0 or offset < 0:
            raise InvalidArgument(f"range {offset}+{length} is not aligned to {BLOCK}")
        if offset + length > self.size:
            raise InvalidArgument(
                f"range {offset}+{length} is beyond the volume's {self.size} bytes"
            )

    @staticmethod
    def _cut(cell: list[Extent], start: int, end: int) -> list[Extent]:
        """The cell's extents with ``[start, end)`` removed (extents split where needed)."""
        out: list[Extent] = []
        for e in cell:
            e_end = e.offset + e.length
            if e_end <= start or e.offset >= end:
                out.append(e)
                continue
            if e.offset < start:
                out.append(Extent(e.offset, start - e.offset, e.chunk, e.coff))
            if e_end > end:
                out.append(Extent(end, e_end - end, e.chunk, e.coff + (end - e.offset)))
        return out

    def put(self, offset: int, length: int, chunk: bytes, coff: int) -> None:
        """Volume bytes ``[offset, offset+length)`` (inside one cell) are chunk bytes at ``coff``."""
        self._check(offset, length)
        c = offset // CELL
        if (offset + length - 1) // CELL != c:
            raise InvalidArgument(f"extent {offset}+{length} crosses a {CELL}-byte cell")
        old = self.cells.get(c)
        new = Extent(offset, length, chunk, coff)
        if not old:
            self.cells[c] = [new]
            return
        cell = self._cut(old, offset, offset + length)
        keys = [e.offset for e in cell]
        i = bisect.bisect_left(keys, offset)
        # merge with a neighbour that continues the same chunk contiguously
        if i > 0:
            p = cell[i - 1]
            if p.chunk == chunk and p.offset + p.length == offset and p.coff + p.length == coff:
                new = Extent(p.offset, p.length + length, chunk, p.coff)
                i -= 1
                del cell[i]
        if i < len(cell):
            n = cell[i]
            if (
                n.chunk == chunk
                and new.offset + new.length == n.offset
                and new.coff + new.length == n.coff
            ):
                new = Extent(new.offset, new.length + n.length, chunk, new.coff)
                del cell[i]
        cell.insert(i, new)
        self.cells[c] = cell

    def clear(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros."""
        self._check(offset, length)
        end = offset + length
        for c in range(offset // CELL, (end - 1) // CELL + 1):
            cell = self.cells.get(c)
            if not cell:
                continue
            rest = self._cut(cell, max(offset, c * CELL), min(end, (c + 1) * CELL))
            if rest:
                self.cells[c] = rest
            else:
                del self.cells[c]

    def extents(self) -> Iterator[Extent]:
        for c in sorted(self.cells):
            yield from self.cells[c]

    def chunks(self) -> set[bytes]:
        return {e.chunk for cell in self.cells.values() for e in cell}

    def data_bytes(self) -> int:
        return sum(e.length for cell in self.cells.values() for e in cell)

    def fragmented_cells(self, limit: int = FRAGMENTED) -> list[int]:
        """Cells (by index) whose map has more than ``limit`` pieces: a caller may re-read
        such a cell whole and write it again, which gives it one chunk."""
        return sorted(c for c, cell in self.cells.items() if len(cell) > limit)

    def __len__(self) -> int:
        return sum(len(cell) for cell in self.cells.values())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ChunkMap)
            and self.size == other.size
            and list(self.extents()) == list(other.extents())
        )

    # --- encoding ---------------------------------------------------------------------------
    def encode(self) -> bytes:
        """size u64 | chunks u32 | extents u64 | chunk ids (32 bytes each) | extents (20 bytes)."""
        table: dict[bytes, int] = {}
        ext = list(self.extents())
        arr = np.zeros(len(ext), dtype=EXTENT)
        for i, e in enumerate(ext):
            arr[i] = (e.offset, e.length, table.setdefault(e.chunk, len(table)), e.coff)
        return (
            struct.pack("<QIQ", self.size, len(table), len(ext)) + b"".join(table) + arr.tobytes()
        )

    @classmethod
    def decode(cls, data: bytes, name: str = "chunk map") -> ChunkMap:
        head = struct.Struct("<QIQ")
        if len(data) < head.size:
            raise FormatError(f"{name}: chunk map truncated", object=name)
        size, nchunks, next_ = head.unpack_from(data)
        want = head.size + nchunks * ID_SIZE + next_ * EXTENT.itemsize
        if len(data) != want:
            raise FormatError(
                f"{name}: chunk map of {len(data)} bytes, its counts say {want}", object=name
            )
        if size % BLOCK:
            raise FormatError(
                f"{name}: volume size {size} is not a multiple of {BLOCK}", object=name
            )
        ids = [
            data[head.size + i * ID_SIZE : head.size + (i + 1) * ID_SIZE] for i in range(nchunks)
        ]
        arr = np.frombuffer(data, dtype=EXTENT, count=next_, offset=head.size + nchunks * ID_SIZE)
        if next_:
            off = arr["offset"].astype(np.uint64)
            ln = arr["length"].astype(np.uint64)
            end = off + ln
            bad = (
                (ln == 0)
                | (off % BLOCK != 0)
                | (ln % BLOCK != 0)
                | (end > size)
                | (off // CELL != (end - 1) // CELL)
                | (arr["chunk"] >= nchunks)
                | (arr["coff"].astype(np.uint64) + ln > CELL)
            )
            if bad.any() or (next_ > 1 and (off[1:] < end[:-1]).any()):
                raise FormatError(f"{name}: chunk map has a bad or overlapping extent", object=name)
        m = cls(size)
        for o, ln_, ch, co in arr.tolist():
            m.cells.setdefault(o // CELL, []).append(Extent(o, ln_, ids[ch], co))
        return m


class Delta(NamedTuple):
    """What turns a volume holding backup ``old`` into one holding backup ``new``
    (``delta``): ``data`` is ``new``'s map cut to the blocks that differ and hold data in
    ``new`` (read and write those); ``zeros`` the merged (offset, length) ranges that differ
    and read as zeros in ``new`` (zero those); every other block is equal in both."""

    data: ChunkMap
    zeros: list[tuple[int, int]]
    changed_bytes: int  # blocks that differ, data or zeros

    @property
    def data_bytes(self) -> int:
        return self.data.data_bytes()


def _blocks(cell: list[Extent], base: int) -> list[tuple[bytes, int] | None]:
    """One cell's content, block by block: (chunk, offset in it) or None for zeros."""
    out: list[tuple[bytes, int] | None] = [None] * (CELL // BLOCK)
    for e in cell:
        for i in range(e.length // BLOCK):
            out[(e.offset - base) // BLOCK + i] = (e.chunk, e.coff + i * BLOCK)
    return out


def delta(old: ChunkMap, new: ChunkMap) -> Delta:
    """Compare two backups' maps (no data read): chunk ids are content-derived, so a block
    that maps to the same bytes of the same chunk in both holds the same data. Cells whose
    extent lists are equal are skipped whole; others are compared block by block. ``new``
    may be larger than ``old`` (the source grew: the new part differs where it holds data)."""
    if new.size < old.size:
        raise InvalidArgument(f"a backup of {new.size} bytes cannot follow one of {old.size}")
    data = ChunkMap(new.size)
    zeros: list[tuple[int, int]] = []
    changed = 0
    for c in sorted(set(old.cells) | set(new.cells)):
        a, b = old.cells.get(c, []), new.cells.get(c, [])
        if a == b:
            continue
        base = c * CELL
        pa, pb = _blocks(a, base), _blocks(b, base)
        for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
            if x == y:
                continue
            off = base + i * BLOCK
            if off >= new.size:
                break
            changed += BLOCK
            if y is None:
                if zeros and zeros[-1][0] + zeros[-1][1] == off:
                    zeros[-1] = (zeros[-1][0], zeros[-1][1] + BLOCK)
                else:
                    zeros.append((off, BLOCK))
            else:
                data.put(off, BLOCK, y[0], y[1])
    return Delta(data, zeros, changed)
