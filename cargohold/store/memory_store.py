"""The in-memory twin of the file store: the same contract, kept in dictionaries.

For engine and server tests that want a replica without disks, and as a second, simpler
implementation that the model-based tests check against the file store. Nothing is
durable; ``flush`` is a no-op. ``corrupt`` flips a stored block, for checksum tests.
"""

from __future__ import annotations

import time
from typing import Any

import crc32c
import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import (
    AlreadyExists,
    Busy,
    ChecksumError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from cargohold.store.base import (
    DATA,
    HOLE,
    ZERO,
    ZERO_CRC,
    BadBlock,
    ReplicaStore,
    ScrubReport,
    SnapshotInfo,
    check_history,
    check_range,
    check_size,
    scrub_range,
)

_ZERO_BLOCK = bytes(BLOCK_SIZE)


class _Layer:
    __slots__ = ("blocks", "gen", "id", "nblocks", "parent", "snapshot")

    def __init__(self, lid: int, parent: int | None, nblocks: int, gen: int) -> None:
        self.id = lid
        self.parent = parent
        self.nblocks = nblocks
        self.gen = gen
        self.snapshot: dict[str, Any] | None = None
        # lba -> (state, generation, data, crc); state DATA/ZERO, or HOLE for "touched"
        self.blocks: dict[int, tuple[int, int, bytes | None, int]] = {}


class MemoryStore(ReplicaStore):
    def __init__(self, size: int) -> None:
        check_size(size)
        self._size = size
        self._gen = 0
        self._seen = 0
        self._durable = 0  # the generation at the last flush (memory has no power to lose)
        self._epoch = 0
        self._history: list[list[int]] = []
        self._layers = {1: _Layer(1, None, size // BLOCK_SIZE, 0)}
        self._head = 1
        self._next = 2
        self.counters: dict[str, int] = {"checksum_errors": 0, "repaired_blocks": 0}

    @classmethod
    def create(cls, size: int) -> MemoryStore:
        return cls(size)

    # --- identity -------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def generation(self) -> int:
        return self._gen

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def durable(self) -> int:
        return min(self._durable, self._gen)

    @property
    def power_loss(self) -> bool:
        return False

    def _claim(self, generation: int | None) -> tuple[int, bool]:
        g = self._seen + 1 if generation is None else generation
        if not isinstance(g, int) or isinstance(g, bool) or g <= self._seen:
            raise InvalidArgument(
                f"generation {g!r} is not above the newest this replica has seen, {self._seen}"
            )
        contiguous = self._gen == self._seen and g == self._gen + 1
        if not self._history or self._history[-1][0] != self._epoch:
            self._history.append([self._epoch, g])
        self._seen = g
        return g, contiguous

    @property
    def history(self) -> list[list[int]]:
        return [list(x) for x in self._history]

    def _complete(self, g: int, contiguous: bool) -> None:
        if contiguous:
            self._gen = g

    def mark_current(
        self,
        generation: int | None = None,
        history: list[list[int]] | None = None,
        reset: bool = False,
    ) -> None:
        g = self._seen if generation is None else generation
        if not isinstance(g, int) or isinstance(g, bool) or (g < self._seen and not reset):
            raise InvalidArgument(
                f"generation {g!r} is below the newest this replica has seen, {self._seen}"
            )
        if history is not None:
            self._history = check_history(history)
        self._gen = self._seen = self._durable = g

    def _import_extents(self, extents: list[Any], generation: int) -> None:
        head = self._layers[self._head]
        for e in extents:
            for i in range(e.count):
                if e.kind == 1:  # DATA
                    blk = bytes(e.data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                    head.blocks[e.lba + i] = (DATA, generation, blk, crc32c.crc32c(blk))
                else:
                    head.blocks[e.lba + i] = (ZERO, generation, None, 0)
        self._seen = max(self._seen, generation)

    def _persist_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def _chain(self, snapshot: str | None = None) -> list[_Layer]:
        out = []
        lid: int | None = self._head if snapshot is None else self._find(snapshot).id
        while lid is not None:
            out.append(self._layers[lid])
            lid = self._layers[lid].parent
        return out

    def _lookup(
        self, b: int, chain: list[_Layer]
    ) -> tuple[_Layer | None, tuple[int, int, bytes | None, int] | None]:
        for layer in chain:
            e = layer.blocks.get(b)
            if e is not None and e[0] != HOLE:
                return layer, e
        return None, None

    # --- I/O ------------------------------------------------------------------------
    def resolve(self, lba: int, n: int, snapshot: str | None = None) -> np.ndarray:
        out = np.full(n, HOLE, dtype=np.uint8)
        chain = self._chain(snapshot)
        for i in range(n):
            _, e = self._lookup(lba + i, chain)
            if e is not None:
                out[i] = e[0]
        return out

    def checksums(self, offset: int, length: int, snapshot: str | None = None) -> np.ndarray:
        lba, n = check_range(offset, length, self._size)
        out = np.full(n, ZERO_CRC, dtype="<u4")
        chain = self._chain(snapshot)
        for i in range(n):
            _, e = self._lookup(lba + i, chain)
            if e is not None and e[0] == DATA:
                out[i] = e[3]
        return out

    def read(self, offset: int, length: int, snapshot: str | None = None) -> bytearray:
        lba, n = check_range(offset, length, self._size)
        out = bytearray(length)
        chain = self._chain(snapshot)
        for i in range(n):
            layer, e = self._lookup(lba + i, chain)
            if e is None or e[0] == ZERO:
                continue
            data = e[2]
            assert data is not None and layer is not None
            if crc32c.crc32c(data) != e[3]:
                self.counters["checksum_errors"] += 1
                name = "head" if layer.id == self._head else self._name(layer)
                raise ChecksumError(
                    f"checksum mismatch in block {lba + i} (layer {name})",
                    blocks=[lba + i],
                    layer=name,
                )
            out[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = data
        return out

    def write(
        self,
        offset: int,
        data: bytes | bytearray | memoryview,
        fua: bool = False,
        generation: int | None = None,
    ) -> int:
        mv = memoryview(data).cast("B")
        lba, n = check_range(offset, len(mv), self._size)
        if n == 0:  # takes its number (ReplicaStore._empty)
            return self._empty(generation)
        g, contiguous = self._claim(generation)
        head = self._layers[self._head]
        for i in range(n):
            blk = bytes(mv[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            head.blocks[lba + i] = (DATA, g, blk, crc32c.crc32c(blk))
        head.gen = g
        self._complete(g, contiguous)
        return self._gen

    def write_zeroes(self, offset: int, length: int, generation: int | None = None) -> int:
        lba, n = check_range(offset, length, self._size)
        if n == 0:  # takes its number (ReplicaStore._empty)
            return self._empty(generation)
        g, contiguous = self._claim(generation)
        head = self._layers[self._head]
        for i in range(n):
            head.blocks[lba + i] = (ZERO, g, None, 0)
        head.gen = g
        self._complete(g, contiguous)
        return self._gen

    def flush(self) -> None:
        self._durable = self._gen

    def expand(self, new_size: int) -> None:
        check_size(new_size)
        if new_size < self._size:
            raise Unsupported(f"shrinking from {self._size} to {new_size} is not supported")
        self._size = new_size
        self._layers[self._head].nblocks = new_size // BLOCK_SIZE

    # --- snapshots --------------------------------------------------------------------
    def _name(self, layer: _Layer) -> str:
        return layer.snapshot["name"] if layer.snapshot else f"layer-{layer.id}"

    def _find(self, name: str) -> _Layer:
        for layer in self._layers.values():
            if layer.snapshot and layer.snapshot["name"] == name:
                return layer
        raise NotFound(f"no snapshot named {name!r}")

    def snapshot_create(self, name: str, labels: dict[str, str] | None = None) -> SnapshotInfo:
        self.validate_snapshot_name(name)
        try:
            self._find(name)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"snapshot {name!r} exists")
        old = self._layers[self._head]
        old.snapshot = {
            "name": name,
            "created": time.time(),
            "generation": self._gen,
            "labels": {str(k): str(v) for k, v in (labels or {}).items()},
        }
        new = _Layer(self._next, old.id, old.nblocks, self._gen)
        self._layers[new.id] = new
        self._head = new.id
        self._next += 1
        return self._info(old)

    def _info(self, layer: _Layer) -> SnapshotInfo:
        assert layer.snapshot is not None
        parent = layer.parent
        pname = None
        while parent is not None:
            p = self._layers[parent]
            if p.snapshot:
                pname = p.snapshot["name"]
                break
            parent = p.parent
        size = sum(BLOCK_SIZE for e in layer.blocks.values() if e[0] == DATA)
        s = layer.snapshot
        return SnapshotInfo(
            s["name"], s["created"], s["generation"], size, dict(s["labels"]), pname
        )

    def snapshot_list(self) -> list[SnapshotInfo]:
        out = [self._info(x) for x in self._layers.values() if x.snapshot]
        return sorted(out, key=lambda s: (s.generation, s.created))

    def _children(self, lid: int) -> list[_Layer]:
        return [x for x in self._layers.values() if x.parent == lid]

    def _purge(self) -> None:
        while True:
            victim = next(
                (
                    x
                    for x in self._layers.values()
                    if x.snapshot is None and x.id != self._head and len(self._children(x.id)) <= 1
                ),
                None,
            )
            if victim is None:
                return
            for kid in self._children(victim.id):
                for b, e in victim.blocks.items():
                    mine = kid.blocks.get(b)
                    if mine is None or mine[0] == HOLE:
                        gen = max(e[1], mine[1] if mine else 0)
                        kid.blocks[b] = (e[0], gen, e[2], e[3])
                kid.parent = victim.parent
            del self._layers[victim.id]

    def snapshot_delete(self, name: str) -> None:
        self._find(name).snapshot = None
        self._purge()

    def snapshot_revert(self, name: str, generation: int | None = None) -> None:
        target = self._find(name)
        anc = set()
        lid: int | None = target.id
        while lid is not None:
            anc.add(lid)
            lid = self._layers[lid].parent
        g, contiguous = self._claim(generation)
        new = _Layer(self._next, target.id, self._size // BLOCK_SIZE, g)
        for layer in self._chain():
            if layer.id in anc:
                break
            for b in layer.blocks:
                new.blocks[b] = (HOLE, g, None, 0)
        self._layers[new.id] = new
        self._head = new.id
        self._next += 1
        self._purge()
        self._complete(g, contiguous)

    # --- deltas, integrity, stats -------------------------------------------------------
    def changed_mask(self, since: int, lba: int, n: int, snapshot: str | None = None) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        for layer in self._chain(snapshot):
            for b, e in layer.blocks.items():
                if lba <= b < lba + n and e[1] > since:
                    mask[b - lba] = True
        return mask

    def generation_map(self, since: int, lba: int, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.uint64)  # no write is ever left half done here
        for layer in self._chain():
            for b, e in layer.blocks.items():
                if lba <= b < lba + n and e[1] > since:
                    out[b - lba] = max(int(out[b - lba]), e[1] << 1 | 1)
        return out

    def scrub(self, offset: int = 0, length: int = 0) -> ScrubReport:
        lba, n = scrub_range(offset, length, self._size)
        bad = []
        checked = 0
        for layer in self._layers.values():
            name = "head" if layer.id == self._head else self._name(layer)
            for b, e in sorted(layer.blocks.items()):
                if e[0] == DATA and e[2] is not None and lba <= b < lba + n:
                    checked += 1
                    if crc32c.crc32c(e[2]) != e[3]:
                        bad.append(BadBlock(name, b))
        self.counters["checksum_errors"] += len(bad)
        return ScrubReport(checked, tuple(bad))

    def repair(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data).cast("B")
        lba, n = check_range(offset, len(mv), self._size)
        fixed = 0
        for i in range(n):
            blk = bytes(mv[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            c = crc32c.crc32c(blk)
            for layer in self._layers.values():
                e = layer.blocks.get(lba + i)
                if (
                    e
                    and e[0] == DATA
                    and e[2] is not None
                    and e[3] == c
                    and crc32c.crc32c(e[2]) != c
                ):
                    layer.blocks[lba + i] = (DATA, e[1], blk, c)
                    fixed += 1
        self.counters["repaired_blocks"] += fixed
        return fixed

    def corrupt(self, block: int, snapshot: str | None = None) -> None:
        """Test hook: flip one byte of a stored block (of the head, or of a snapshot)."""
        layer = self._find(snapshot) if snapshot else self._layers[self._head]
        state, gen, data, crc = layer.blocks[block]
        assert data is not None
        flipped = bytes([data[0] ^ 0xFF]) + data[1:]
        layer.blocks[block] = (state, gen, flipped, crc)

    def stats(self) -> dict[str, Any]:
        data = sum(
            BLOCK_SIZE for x in self._layers.values() for e in x.blocks.values() if e[0] == DATA
        )
        return {
            "size": self._size,
            "generation": self._gen,
            "seen": self._seen,
            "durable": self.durable,
            "power_loss": False,
            "epoch": self._epoch,
            "layers": len(self._layers),
            "snapshots": sum(1 for x in self._layers.values() if x.snapshot),
            "allocated_bytes": data,
            **self.counters,
        }

    def close(self) -> None:
        return None


__all__ = ["Busy", "MemoryStore"]
