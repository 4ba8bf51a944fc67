"""The contract of a replica store, kept by the file store and by its in-memory twin.

Callers: the replica server (one store per open replica) and, in tests, the engine.
Offsets and lengths are bytes and must be multiples of the 4 KiB block. Every mutation
advances the replica's generation by one; the generation is persisted with the data.

Shared logic that only needs the primitives (export, import, changed ranges) lives here, so
both stores behave the same way by construction.
"""

from __future__ import annotations

import itertools
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import crc32c
import numpy as np

from cargohold.constants import BLOCK_SIZE, MAX_EPOCH, MAX_EPOCH_STEP, MAX_VOLUME_SIZE, MIB
from cargohold.errors import ChecksumError, Fenced, InvalidArgument, ReplicaIOError
from cargohold.protocol import extent_stream as xs

# What a block resolves to through the layer chain.
HOLE = 0  # never written (reads as zeros without touching data files)
DATA = 1
ZERO = 2  # explicitly zeroed or trimmed

SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_EXPORT_BYTES = 8 * MIB
SCAN_BLOCKS = 1 << 22
"""Blocks examined per step of a map scan (16 GiB of volume, 4 MiB of mask)."""
ZERO_CRC = crc32c.crc32c(bytes(BLOCK_SIZE))
"""The checksum a block that reads as zeros has in a checksum map (a hole, a zeroed block)."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    created: float  # unix time
    generation: int  # the replica's generation when the snapshot was taken
    size_bytes: int  # bytes of data held in this snapshot's own layer
    labels: dict[str, str] = field(default_factory=dict)
    parent: str | None = None  # the snapshot below this one, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class BadBlock:
    layer: str  # "head" or the snapshot's name
    block: int

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "block": self.block, "offset": self.block * BLOCK_SIZE}


@dataclass(frozen=True, slots=True)
class ScrubReport:
    checked_blocks: int
    bad: tuple[BadBlock, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"checked_blocks": self.checked_blocks, "bad": [b.to_dict() for b in self.bad]}


def check_range(offset: int, length: int, size: int) -> tuple[int, int]:
    """Validate a byte range against the block size and the replica size -> (lba, nblocks)."""
    if offset < 0 or length < 0:
        raise InvalidArgument(f"negative offset or length ({offset}, {length})")
    if offset % BLOCK_SIZE or length % BLOCK_SIZE:
        raise InvalidArgument(
            f"offset {offset} and length {length} must be multiples of {BLOCK_SIZE}"
        )
    if offset + length > size:
        raise InvalidArgument(f"range [{offset}, {offset + length}) beyond the size {size}")
    return offset // BLOCK_SIZE, length // BLOCK_SIZE


def scrub_range(offset: int, length: int, size: int) -> tuple[int, int]:
    """A scrub's byte range (``length`` 0: from ``offset`` to the end) -> (lba, nblocks)."""
    if length == 0 and 0 <= offset <= size:
        length = size - offset
    return check_range(offset, length, size)


def check_size(size: object) -> int:
    """A volume size: a positive multiple of the block size, at most MAX_VOLUME_SIZE."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidArgument(f"size must be an integer number of bytes, got {size!r}")
    if size <= 0 or size % BLOCK_SIZE:
        raise InvalidArgument(f"size {size} must be a positive multiple of {BLOCK_SIZE}")
    if size > MAX_VOLUME_SIZE:
        raise InvalidArgument(
            f"size {size} exceeds the largest volume, {MAX_VOLUME_SIZE} (256 TiB)"
        )
    return size


def check_history(history: object) -> list[list[int]]:
    """A replica's history: [[epoch, first generation], ...], both strictly increasing."""
    if isinstance(history, list) and all(
        isinstance(x, list | tuple)
        and len(x) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x)
        for x in history
    ):
        pairs = [list(x) for x in history]
        if all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(pairs)):
            return pairs
    raise InvalidArgument(
        f"history must be [[epoch, first generation], ...] with both increasing, got {history!r}"
    )


def block_crcs(data: bytes | bytearray | memoryview) -> np.ndarray:
    """CRC32C of every 4 KiB block of ``data`` (C-backed, one call per block)."""
    mv = memoryview(data)
    n = len(mv) // BLOCK_SIZE
    if n == 1:
        return np.array([crc32c.crc32c(mv)], dtype="<u4")
    return np.fromiter(
        map(crc32c.crc32c, [mv[i : i + BLOCK_SIZE] for i in range(0, n * BLOCK_SIZE, BLOCK_SIZE)]),
        dtype="<u4",
        count=n,
    )


def window_digests(crcs: np.ndarray, blocks: int) -> np.ndarray:
    """CRC32C of each ``blocks``-long window of a checksum map (the last may be shorter):
    two replicas compare a window in 4 bytes, and fetch per-block maps only where they
    differ."""
    if blocks <= 0:
        raise InvalidArgument(f"digest window must be positive, got {blocks}")
    raw = np.ascontiguousarray(crcs, dtype="<u4").data.cast("B")
    step = blocks * 4
    return np.fromiter(
        (crc32c.crc32c(raw[i : i + step]) for i in range(0, len(raw), step)),
        dtype="<u4",
        count=-(-len(crcs) // blocks),
    )


def not_applied(first: Exception) -> ReplicaIOError:
    """The outcome of a ``write_many`` write after a failed one: not applied."""
    return ReplicaIOError(f"not applied: an earlier write of the batch failed ({first})")


def runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) index pairs of the True runs in a boolean array."""
    if not mask.any():
        return
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    stops = np.flatnonzero(d == -1)
    yield from zip(starts.tolist(), stops.tolist(), strict=True)


class ReplicaStore(ABC):
    """One replica of one volume. Not thread-safe: one owner (an event loop) at a time."""

    # --- identity and state --------------------------------------------------------
    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def generation(self) -> int: ...

    @property
    @abstractmethod
    def seen(self) -> int:
        """The newest generation recorded at all (>= ``generation``; above it after a gap)."""

    @property
    @abstractmethod
    def epoch(self) -> int: ...

    @property
    @abstractmethod
    def durable(self) -> int:
        """The generation the replica was complete through at its last completed FLUSH
        (or MARK_CURRENT): what survives a machine crash. Never above ``generation``."""

    @property
    @abstractmethod
    def power_loss(self) -> bool:
        """The replica recovered from a machine crash (its generation fell back to
        ``durable``) and has not been marked current since: it may differ from the other
        replicas above its generation (persisted; cleared only by ``mark_current``)."""

    @property
    @abstractmethod
    def history(self) -> list[list[int]]:
        """[[epoch, first generation], ...]: which engine epoch made which mutations."""

    @abstractmethod
    def mark_current(
        self,
        generation: int | None = None,
        history: list[list[int]] | None = None,
        reset: bool = False,
    ) -> None:
        """After a rebuild: complete through ``generation`` (default ``seen``), with the
        source's ``history``; durable. ``reset`` (a full rebuild): ``generation`` may be
        below what the replica saw on a fork, whose content the rebuild replaced."""

    @abstractmethod
    def _persist_epoch(self, epoch: int) -> None: ...

    def accept_epoch(self, epoch: int, jump: bool = False) -> None:
        """Fence: accept ``epoch`` if it is not older than the newest accepted (persisted),
        and not more than ``MAX_EPOCH_STEP`` above it unless ``jump`` (the engine of a
        volume recovered with ``volume recover-epoch``): an epoch nobody could have issued
        would otherwise fence every later engine for ever."""
        if epoch > MAX_EPOCH:
            raise InvalidArgument(f"epoch {epoch} is above the largest epoch {MAX_EPOCH}")
        if epoch - self.epoch > MAX_EPOCH_STEP and not jump:
            raise InvalidArgument(
                f"epoch {epoch} is more than {MAX_EPOCH_STEP} above the replica's epoch "
                f"{self.epoch}: no manager issued it (refused so that it cannot fence the "
                "volume; `cargohold volume recover-epoch` raises a volume's epoch on purpose)",
                epoch=self.epoch,
            )
        if epoch < self.epoch:
            raise Fenced(
                f"epoch {epoch} is older than the replica's epoch {self.epoch}",
                epoch=self.epoch,
            )
        if epoch > self.epoch:
            self._persist_epoch(epoch)

    @abstractmethod
    def _claim(self, generation: int | None) -> tuple[int, bool]:
        """Take a mutation's generation: the caller's (refused unless above ``seen``) or
        the next. -> (it, whether it continues the sequence)."""

    @abstractmethod
    def _complete(self, g: int, contiguous: bool) -> None:
        """The mutation claimed as ``g`` is fully applied."""

    def _empty(self, generation: int | None) -> int:
        """A mutation of no bytes (a WRITE, TRIM or WRITE_ZEROES of length 0): with the
        engine's number it is a mutation that completed and takes the number, or the
        next mutation would leave a gap holding the generation back for ever although
        nothing is missing. -> generation."""
        if generation is not None:
            g, contiguous = self._claim(generation)
            self._complete(g, contiguous)
        return self.generation

    # --- I/O ---------------------------------------------------------------------
    @abstractmethod
    def read(self, offset: int, length: int, snapshot: str | None = None) -> bytearray:
        """Read and verify every block (of the head, or of a snapshot); ChecksumError names
        the bad blocks. Blocks beyond what a snapshot held read as zeros."""

    @abstractmethod
    def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        fua: bool = False,
        generation: int | None = None,
    ) -> int:
        """Write whole blocks; with ``fua`` the write is durable on return.

        ``generation`` numbers the mutation (the engine numbers a volume's mutations so that
        all its replicas agree); it must be above ``seen``. Default: ``seen + 1``.
        -> the generation the replica is complete through afterwards."""

    def write_many(self, writes: list[tuple[int, Any, int]]) -> list[int | Exception]:
        """``write`` each (offset, data, generation) in order, each with its own outcome:
        the generation the replica is complete through after it, or the exception that
        failed it (the replica server's WRITE_BATCH). The writes after a failed one are not
        applied (``not_applied``): what a batch applied is a prefix of it. The file store
        writes adjacent ones (offset + length = the next offset) with one system call."""
        out: list[int | Exception] = []
        for offset, data, generation in writes:
            if out and isinstance(out[-1], Exception):
                out.append(not_applied(out[-1]))
                continue
            try:
                out.append(self.write(offset, data, generation=generation))
            except Exception as e:  # the caller answers it; the rest are not applied
                out.append(e)
        return out

    @abstractmethod
    def flush(self) -> None:
        """Make every completed write durable."""

    def flush_handles(self) -> list[int]:
        """Descriptors to fdatasync (and close) for a FLUSH done in another thread."""
        self.flush()
        return []

    def durable_mark(self) -> Any:
        """Taken before a FLUSH's ``flush_handles``; given to ``flushed`` after its syncs
        (and every earlier FLUSH's) returned: what it made durable."""
        return None

    def flushed(self, mark: Any) -> None:
        """A FLUSH that began at ``mark`` (``durable_mark``) completed: ``durable`` follows.
        Here nothing: ``flush_handles`` flushed already (a store without descriptors)."""
        return None

    @abstractmethod
    def write_zeroes(self, offset: int, length: int, generation: int | None = None) -> int:
        """Make the range read as zeros and release its space. -> generation."""

    def trim(self, offset: int, length: int, generation: int | None = None) -> int:
        """Discard the range; it reads as zeros afterwards and its space is released."""
        return self.write_zeroes(offset, length, generation)

    @abstractmethod
    def _import_extents(self, extents: list[Any], generation: int) -> None:
        """Apply verified extents, recorded at ``generation``, without claiming it."""

    @abstractmethod
    def expand(self, new_size: int) -> None: ...

    # --- snapshots -----------------------------------------------------------------
    @abstractmethod
    def snapshot_create(self, name: str, labels: dict[str, str] | None = None) -> SnapshotInfo:
        """O(1): the current head becomes the snapshot, a new empty head goes on top."""

    @abstractmethod
    def snapshot_list(self) -> list[SnapshotInfo]: ...

    @abstractmethod
    def snapshot_delete(self, name: str) -> None: ...

    @abstractmethod
    def snapshot_revert(self, name: str, generation: int | None = None) -> None:
        """Make the head read exactly as the snapshot; later snapshots stay readable."""

    # --- maps, deltas, integrity -----------------------------------------------------
    @abstractmethod
    def resolve(self, lba: int, n: int, snapshot: str | None = None) -> np.ndarray:
        """What each block resolves to through the chain: HOLE, DATA or ZERO (uint8)."""

    @abstractmethod
    def checksums(self, offset: int, length: int, snapshot: str | None = None) -> np.ndarray:
        """The checksum map of a range (of the head, or of a snapshot), from the block maps
        alone (no data read): per block, the CRC32C of what a read returns, i.e. the
        recorded checksum of the topmost layer holding the block, ``ZERO_CRC`` for holes and
        zeroed blocks. uint32 little-endian, one per block. Replicas holding the same content
        have the same map, whatever their layering."""

    @abstractmethod
    def changed_mask(self, since: int, lba: int, n: int, snapshot: str | None = None) -> np.ndarray:
        """Which blocks may differ from what they were at generation ``since`` (bool): of
        the head, or of ``snapshot``'s content (its own layer chain, not the head's)."""

    @abstractmethod
    def generation_map(self, since: int, lba: int, n: int) -> np.ndarray:
        """Per block of the head's chain, the newest generation recorded for it above
        ``since``, as ``generation << 1 | settled`` (uint64; 0: nothing recorded above
        ``since``). ``settled`` is 0 for a record of the head whose write was claimed and
        not completed (``pend != cur``: the block holds its value from before that
        generation), 1 otherwise. From the block maps alone, no data read (the merge of
        a start in doubt: ``changed_generations``)."""

    @abstractmethod
    def scrub(self, offset: int = 0, length: int = 0) -> ScrubReport:
        """Verify every allocated block of every layer against its checksum, in the byte
        range [offset, offset + length) (``length`` 0: to the end)."""

    @abstractmethod
    def repair(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Rewrite bad blocks in every layer whose recorded checksum ``data`` matches.
        -> the number of blocks repaired."""

    @abstractmethod
    def stats(self) -> dict[str, Any]: ...

    @abstractmethod
    def close(self) -> None: ...

    # --- shared on top of the primitives -------------------------------------------------
    def validate_snapshot_name(self, name: str) -> None:
        if not isinstance(name, str) or not SNAPSHOT_NAME.match(name):
            raise InvalidArgument(
                f"bad snapshot name {name!r}: 1-128 of [A-Za-z0-9._-], starting alphanumeric"
            )

    def extents(
        self, offset: int, length: int, snapshot: str | None = None
    ) -> list[tuple[int, int, int]]:
        """Allocation map of a range: (offset, length, HOLE|DATA|ZERO) runs.

        Covers at most ``SCAN_BLOCKS`` blocks (16 GiB) per call: callers continue from the
        end of the last extent returned."""
        lba, n = check_range(offset, length, self.size)
        n = min(n, SCAN_BLOCKS)
        kinds = self.resolve(lba, n, snapshot)
        if n == 0:
            return []
        cut = np.flatnonzero(np.diff(kinds)) + 1
        starts = np.concatenate(([0], cut))
        stops = np.concatenate((cut, [n]))
        return [
            ((lba + a) * BLOCK_SIZE, (b - a) * BLOCK_SIZE, int(kinds[a]))
            for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
        ]

    def changed_since(
        self, since: int, offset: int = 0, length: int | None = None, snapshot: str | None = None
    ) -> list[tuple[int, int]]:
        """Byte ranges that changed after generation ``since`` (delta rebuild, backup): of
        the head, or of ``snapshot``'s content (changed-block metadata between snapshots)."""
        if length is None:
            length = self.size - offset
        lba, n = check_range(offset, length, self.size)
        out: list[tuple[int, int]] = []
        for lo in range(lba, lba + n, SCAN_BLOCKS):
            cnt = min(SCAN_BLOCKS, lba + n - lo)
            if not self.may_have_records(lo, cnt):
                continue
            mask = self.changed_mask(since, lo, cnt, snapshot)
            for a, b in runs(mask):
                start, length_ = (lo + a) * BLOCK_SIZE, (b - a) * BLOCK_SIZE
                if out and out[-1][0] + out[-1][1] == start:  # join across chunk edges
                    out[-1] = (out[-1][0], out[-1][1] + length_)
                else:
                    out.append((start, length_))
        return out

    def changed_generations(
        self, since: int, offset: int = 0, length: int | None = None
    ) -> list[tuple[int, int, int, int]]:
        """(offset, length, generation, pending) runs of the head's blocks recorded after
        ``since``: each block's newest generation (``generation_map``), ``pending`` 1 where
        that record's write was claimed and not completed. Runs of equal values, joined."""
        if length is None:
            length = self.size - offset
        lba, n = check_range(offset, length, self.size)
        out: list[tuple[int, int, int, int]] = []
        for lo in range(lba, lba + n, SCAN_BLOCKS):
            cnt = min(SCAN_BLOCKS, lba + n - lo)
            if not self.may_have_records(lo, cnt):
                continue
            ranks = self.generation_map(since, lo, cnt)
            cut = np.flatnonzero(np.diff(ranks)) + 1
            starts = np.concatenate(([0], cut))
            stops = np.concatenate((cut, [cnt]))
            rank = ranks[starts]
            keep = rank != 0
            starts, stops, rank = starts[keep], stops[keep], rank[keep]
            one = np.uint64(1)
            runs = list(
                zip(
                    ((lo + starts) * BLOCK_SIZE).tolist(),
                    ((stops - starts) * BLOCK_SIZE).tolist(),
                    (rank >> one).tolist(),
                    (one - (rank & one)).tolist(),
                    strict=True,
                )
            )
            if runs and out:  # join across chunk edges
                last, first = out[-1], runs[0]
                if last[0] + last[1] == first[0] and last[2:] == first[2:]:
                    out[-1] = (last[0], last[1] + first[1], *last[2:])
                    runs = runs[1:]
            out += runs
        return out

    def may_have_records(self, lba: int, n: int) -> bool:
        """False only if no layer holds anything for these blocks (lets scans skip fast)."""
        return True

    def export(
        self,
        offset: int,
        length: int,
        since: int = 0,
        max_bytes: int = DEFAULT_EXPORT_BYTES,
        snapshot: str | None = None,
    ) -> list[bytes | memoryview]:
        """A chunk of the range as an extent stream (buffers, ready for writelines).

        Covers [offset, end) where ``end`` is in the stream header; data blocks are
        verified on the way out. ``since`` > 0 exports only what changed after that
        generation, with zeroed or reverted-away blocks as ZERO extents. ``snapshot`` exports
        a snapshot's content instead of the head's; with ``since`` > 0, the blocks of the
        snapshot's own layer chain recorded after ``since`` (an incremental backup: applied
        over the content at ``since``, it gives the snapshot's content).
        """
        lba, n = check_range(offset, length, self.size)
        n = min(n, SCAN_BLOCKS)
        max_blocks = max(1, max_bytes // BLOCK_SIZE)
        kinds = self.resolve(lba, n, snapshot)
        if since > 0:
            changed = self.changed_mask(since, lba, n, snapshot)
            kinds = np.where(changed, np.where(kinds == HOLE, ZERO, kinds), HOLE)
        # stop once max_blocks of data are in the chunk
        data_cum = np.cumsum(kinds == DATA)
        stop = (
            n
            if not n or data_cum[-1] <= max_blocks
            else int(np.searchsorted(data_cum, max_blocks, "right"))
        )
        out_ext: list[xs.Extent] = []
        for kind in (DATA, ZERO):
            for a, b in runs(kinds[:stop] == kind):
                if kind == ZERO:
                    out_ext.append(xs.Extent(xs.KIND_ZERO, lba + a, b - a))
                else:
                    data = self.read((lba + a) * BLOCK_SIZE, (b - a) * BLOCK_SIZE, snapshot)
                    crcs = block_crcs(data)
                    out_ext.append(
                        xs.Extent(
                            xs.KIND_DATA,
                            lba + a,
                            b - a,
                            memoryview(data),
                            memoryview(crcs.tobytes()),
                        )
                    )
        out_ext.sort(key=lambda e: e.lba)
        header = xs.StreamHeader(offset, (lba + stop) * BLOCK_SIZE, since, self.generation)
        return xs.encode(header, out_ext)

    def import_stream(
        self, buf: bytes | bytearray | memoryview, generation: int | None = None
    ) -> int:
        """Apply an extent stream made by ``export`` (of this or another replica).

        Imported blocks are history, not new mutations: they are recorded at ``generation``
        (default: the newer of ``seen`` and the stream's source generation) and do not make
        the replica complete through anything; after a rebuild the engine calls
        ``mark_current``."""
        header, extents = xs.decode(buf)
        if header.end > self.size:
            raise InvalidArgument(f"stream covers up to {header.end}, replica size {self.size}")
        # verify everything before applying anything
        for e in extents:
            if e.kind == xs.KIND_DATA:
                assert e.crcs is not None and e.data is not None
                want = np.frombuffer(e.crcs, dtype="<u4")
                got = block_crcs(e.data)
                bad = np.flatnonzero(want != got)
                if bad.size:
                    blocks = [e.lba + int(i) for i in bad[:64]]
                    raise ChecksumError(
                        f"extent stream: {bad.size} block(s) fail their checksum, first {blocks[0]}",
                        blocks=blocks,
                    )
        g = max(self.seen, header.generation) if generation is None else generation
        self._import_extents(extents, g)
        return self.generation


def stream_end(buffers: list[bytes | memoryview]) -> int:
    """The ``end`` offset of an encoded extent stream (where the next chunk starts)."""
    end: int = struct.unpack_from("<Q", buffers[0], 24)[0]
    return end
