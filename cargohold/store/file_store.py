"""The file store: one replica as a directory of layers, thin, checksummed, crash-safe.

Directory layout (docs/formats/replica-store.md):
    replica.meta          epoch, size, the layer tree and snapshot metadata (atomic rename)
    layer-NNNNNN.data     sparse block data of one layer
    layer-NNNNNN.map      mmap'd block map of one layer (state, generation, CRC32C)

Writes go to the head layer in an order that makes any crash safe (see ``write``): a block
written after the last FLUSH reads back as its old or its new content, never a mix, and its
checksum always verifies. Callers: the replica server; tests.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
from crc32c import crc32c

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import (
    AlreadyExists,
    Busy,
    ChecksumError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from cargohold.protocol.extent_stream import KIND_DATA
from cargohold.store import format as fmt
from cargohold.store.base import (
    DATA,
    HOLE,
    ZERO,
    ZERO_CRC,
    ReplicaStore,
    ScrubReport,
    SnapshotInfo,
    block_crcs,
    check_history,
    check_range,
    check_size,
    runs,
    scrub_range,
)
from cargohold.store.integrity import recover_head, repair_layers, scrub_layers
from cargohold.store.layer import Layer, file_names, io_error, sync_fds

META_FILE = "replica.meta"
_CHUNK = 1 << 16  # blocks per step of long operations (256 MiB of volume)
_SRC_HOLE = -1
_SRC_ZERO = -2


def _write_atomic(directory: str, name: str, blob: bytes) -> None:
    """Replace ``name`` with ``blob`` atomically (tmp + fsync + rename + fsync of the dir).
    A failure (a full disk, say) leaves the old file in place and raises NoSpace/IOError."""
    tmp = os.path.join(directory, name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(directory, name))
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise io_error(e, f"write {name}") from None


class FileStore(ReplicaStore):
    """A replica on a local filesystem (ext4, xfs: anything with sparse files and holes)."""

    def __init__(self, directory: str, meta: dict[str, Any], layers: dict[int, Layer]) -> None:
        self.directory = directory
        self._meta = meta
        self._layers = layers
        self._chain: list[Layer] = []
        self._rebuild_chain()
        head = self._chain[0]
        self._gen = head.generation  # complete through: every mutation up to it is here
        self._seen = max(head.seen, self._gen)  # the newest mutation recorded at all
        self._dirty: set[int] = set()
        self._busy = False
        self.counters = dict.fromkeys(
            (
                "reads",
                "writes",
                "read_bytes",
                "written_bytes",
                "flushes",
                "zeroes",
                "checksum_errors",
                "repaired_blocks",
                "recovered_blocks",
            ),
            0,
        )

    # --- create / open / close --------------------------------------------------------
    @classmethod
    def create(cls, directory: str, size: int, **labels: Any) -> FileStore:
        check_size(size)
        if os.path.exists(os.path.join(directory, META_FILE)):
            raise AlreadyExists(f"a replica already exists in {directory}")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise io_error(e, "create replica") from None
        layer = Layer.create(directory, 1, size // BLOCK_SIZE, generation=0)
        meta: dict[str, Any] = {
            "format": fmt.META_VERSION,
            "size": size,
            "epoch": 0,
            "created": time.time(),
            "labels": {k: str(v) for k, v in labels.items()},
            "head": 1,
            "next_layer": 2,
            "layers": {"1": {"parent": None, "snapshot": None}},
        }
        try:
            _write_atomic(directory, META_FILE, fmt.encode_meta(meta))
        except Exception:
            layer.close()
            layer.unlink()
            raise
        store = cls(directory, meta, {1: layer})
        store._mark_open()
        return store

    @classmethod
    def open(cls, directory: str) -> FileStore:
        path = os.path.join(directory, META_FILE)
        try:
            with open(path, "rb") as f:
                meta = fmt.decode_meta(f.read(), path)
        except FileNotFoundError:
            raise NotFound(f"no replica in {directory}") from None
        layers: dict[int, Layer] = {}
        try:
            for lid in meta["layers"]:
                layers[int(lid)] = Layer.open(directory, int(lid))
        except Exception:
            for layer in layers.values():
                layer.close()
            raise
        known = set().union(*(file_names(lid, layer.nblocks) for lid, layer in layers.items()))
        for name in os.listdir(directory):  # leftovers of an operation a crash cut short
            if (name.startswith("layer-") and name not in known) or name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))
        store = cls(directory, meta, layers)
        head = store._chain[0]
        if not head.clean:
            seen, store.counters["recovered_blocks"] = recover_head(head, store._seen)
            store._seen = head.seen = seen
        store._mark_open()
        for _ in store._purge():  # finish a snapshot deletion that a crash or stop cut short
            pass
        return store

    def _mark_open(self) -> None:
        head = self._chain[0]
        head.clean = False
        head.sync()

    def close(self) -> None:
        if not self._layers:
            return
        self.flush()
        head = self._chain[0]
        head.clean = True
        head.sync()
        for layer in self._layers.values():
            layer.close()
        self._layers = {}
        self._chain = []

    # --- the layer tree ---------------------------------------------------------------
    def _ancestry(self, lid: int | None) -> list[int]:
        """``lid`` and its ancestors, nearest first."""
        out = []
        while lid is not None:
            out.append(lid)
            parent = self._meta["layers"][str(lid)]["parent"]
            lid = None if parent is None else int(parent)
        return out

    def _rebuild_chain(self) -> None:
        self._chain = [self._layers[lid] for lid in self._ancestry(int(self._meta["head"]))]

    def _install_head(self, new: Layer, parent: int, meta: dict[str, Any]) -> None:
        """Make ``new`` (already created and synced) the head on top of ``parent``, in the
        same durable metadata change as whatever ``meta`` (a draft) carries already."""
        meta["next_layer"] = new.id + 1
        meta["layers"][str(new.id)] = {"parent": parent, "snapshot": None}
        meta["head"] = new.id
        try:
            self._commit(meta)
        except Exception:
            new.close()
            new.unlink()
            raise
        self._layers[new.id] = new
        self._rebuild_chain()

    def _draft(self) -> dict[str, Any]:
        """A copy of the metadata to change; ``_commit`` makes it durable, then current.
        If the write fails (a full disk), memory keeps agreeing with the disk."""
        return copy.deepcopy(self._meta)

    def _commit(self, meta: dict[str, Any]) -> None:
        _write_atomic(self.directory, META_FILE, fmt.encode_meta(meta))
        self._meta = meta

    def _layer_name(self, lid: int) -> str:
        if lid == self._chain[0].id:
            return "head"
        snap = self._meta["layers"][str(lid)]["snapshot"]
        return snap["name"] if snap else f"layer-{lid}"

    def _snapshot_layer(self, name: str) -> int:
        for lid, info in self._meta["layers"].items():
            snap = info["snapshot"]
            if snap and snap["name"] == name:
                return int(lid)
        raise NotFound(f"no snapshot named {name!r}")

    def _children(self, lid: int) -> list[int]:
        return [int(k) for k, v in self._meta["layers"].items() if v["parent"] == lid]

    # --- identity ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self._meta["size"])

    @property
    def generation(self) -> int:
        return self._gen

    @property
    def epoch(self) -> int:
        return int(self._meta["epoch"])

    def _persist_epoch(self, epoch: int) -> None:
        meta = self._draft()
        meta["epoch"] = epoch
        self._commit(meta)

    @property
    def seen(self) -> int:
        return self._seen

    def _claim(self, generation: int | None) -> tuple[int, bool]:
        """Take the generation of a mutation: the caller's (the engine numbers the volume's
        mutations) or the next one. -> (generation, whether it continues the sequence)."""
        g = self._seen + 1 if generation is None else generation
        if not isinstance(g, int) or isinstance(g, bool) or g <= self._seen:
            raise InvalidArgument(
                f"generation {g!r} is not above the newest this replica has seen, {self._seen}"
            )
        contiguous = self._gen == self._seen and g == self._gen + 1
        history = self._meta.get("history", [])
        if not history or history[-1][0] != self.epoch:
            # the first mutation of a new epoch: where this epoch's part of history begins,
            # durable before the mutation (engines compare histories like Raft's terms)
            meta = self._draft()
            meta["history"] = [*history, [self.epoch, g]]
            self._commit(meta)
        self._seen = g
        self._chain[0].seen = g
        return g, contiguous

    @property
    def history(self) -> list[list[int]]:
        return [list(x) for x in self._meta.get("history", [])]

    @property
    def labels(self) -> dict[str, str]:
        """The labels given at create (``replica``, ``cluster_id``)."""
        return dict(self._meta.get("labels") or {})

    def _complete(self, g: int, contiguous: bool) -> None:
        """The mutation claimed as ``g`` is fully applied: the replica is complete through it
        if nothing before it is missing. A failed mutation never gets here: a gap remains
        and the generation stays put until ``mark_current``."""
        if contiguous:
            self._gen = g
            self._chain[0].generation = g

    def mark_current(
        self,
        generation: int | None = None,
        history: list[list[int]] | None = None,
        reset: bool = False,
    ) -> None:
        """After a rebuild: this replica now holds every mutation up to ``generation``
        (default: the newest it has seen), and the history of the replica it was rebuilt
        from (``history``: [[epoch, first generation], ...]). Durable before returning.
        ``reset``: after a full rebuild (everything cleared, then copied) the generations
        this replica saw on a fork are void, so ``generation`` may be below them."""
        g = self._seen if generation is None else generation
        if not isinstance(g, int) or isinstance(g, bool) or (g < self._seen and not reset):
            raise InvalidArgument(
                f"generation {g!r} is below the newest this replica has seen, {self._seen}"
            )
        self.flush()
        if history is not None:
            meta = self._draft()
            meta["history"] = check_history(history)
            self._commit(meta)
        self._gen = self._seen = g
        head = self._chain[0]
        head.generation = head.seen = g
        try:
            head.sync()
        except OSError as e:
            raise io_error(e, "mark current") from None

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
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        lba, n = check_range(offset, len(mv), self.size)
        if n == 0:
            return self._gen
        self._chain[0].ensure_map_space(lba, n)
        g, contiguous = self._claim(generation)
        self._put(lba, mv, g)
        self._complete(g, contiguous)
        self.counters["writes"] += 1
        self.counters["written_bytes"] += len(mv)
        if fua:
            self.flush()
        return self._gen

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
            head.pwrite(lba, mv)
        except OSError as e:
            del meta  # a traceback holding a view of the map would keep it from closing
            raise io_error(e, f"write at {lba * BLOCK_SIZE}") from None
        # 4. commit: the new checksum becomes the current one, the block lives here
        head.cur[lba : lba + n] = crcs
        meta[:] = tag | np.uint64(fmt.DATA)
        self._dirty.add(head.id)

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
        if n == 0:
            return self._gen
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
        sync_fds(self.flush_handles())

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

    # --- snapshots --------------------------------------------------------------------
    def _start(self) -> None:
        if self._busy:
            raise Busy("another snapshot operation is running on this replica")
        self._busy = True

    def snapshot_create(self, name: str, labels: dict[str, str] | None = None) -> SnapshotInfo:
        self.validate_snapshot_name(name)
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        try:
            self._snapshot_layer(name)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"snapshot {name!r} exists")
        self._start()
        try:
            self.flush()
            old = self._chain[0]
            old.sync()
            lid = int(self._meta["next_layer"])
            new = Layer.create(self.directory, lid, old.nblocks, self._gen, self._seen)
            meta = self._draft()
            meta["layers"][str(old.id)]["snapshot"] = {
                "name": name,
                "created": time.time(),
                "labels": labels,
                "generation": self._gen,
            }
            self._install_head(new, old.id, meta)
            old.clean = True
        finally:
            self._busy = False
        return self._snapshot_info(old.id)

    def _snapshot_info(self, lid: int) -> SnapshotInfo:
        info = self._meta["layers"][str(lid)]
        snap = info["snapshot"]
        parent = info["parent"]
        parent_name = None
        while parent is not None:  # nearest ancestor that is still a visible snapshot
            p = self._meta["layers"][str(parent)]
            if p["snapshot"]:
                parent_name = p["snapshot"]["name"]
                break
            parent = p["parent"]
        return SnapshotInfo(
            name=snap["name"],
            created=snap["created"],
            generation=snap["generation"],
            size_bytes=self._layers[lid].data_bytes(),
            labels=dict(snap["labels"]),
            parent=parent_name,
        )

    def snapshot_list(self) -> list[SnapshotInfo]:
        out = [
            self._snapshot_info(int(lid))
            for lid, info in self._meta["layers"].items()
            if info["snapshot"]
        ]
        return sorted(out, key=lambda s: (s.generation, s.created))

    def snapshot_delete(self, name: str) -> None:
        for _ in self.snapshot_delete_steps(name):
            pass

    def snapshot_delete_steps(self, name: str) -> Iterator[None]:
        """Delete a snapshot online, yielding between chunks so I/O can go on meanwhile."""
        lid = self._snapshot_layer(name)
        self._start()
        try:
            meta = self._draft()
            meta["layers"][str(lid)]["snapshot"] = None
            self._commit(meta)
            yield from self._purge()
        finally:
            self._busy = False

    def _purge(self) -> Iterator[None]:
        """Fold away every layer that is no longer a snapshot nor the head."""
        while True:
            head = self._chain[0].id
            victim = next(
                (
                    int(k)
                    for k, v in self._meta["layers"].items()
                    if v["snapshot"] is None and int(k) != head and len(self._children(int(k))) <= 1
                ),
                None,
            )
            if victim is None:
                return
            kids = self._children(victim)
            if kids:
                yield from self._layers[kids[0]].absorb(self._layers[victim])
            meta = self._draft()
            if kids:
                meta["layers"][str(kids[0])]["parent"] = meta["layers"][str(victim)]["parent"]
            del meta["layers"][str(victim)]
            self._commit(meta)
            layer = self._layers.pop(victim)
            self._rebuild_chain()
            layer.close()
            layer.unlink()

    def snapshot_revert(self, name: str, generation: int | None = None) -> None:
        target = self._snapshot_layer(name)
        self._start()
        try:
            self.flush()
            ancestors = set(self._ancestry(target))
            gen, contiguous = self._claim(generation)
            old_head = self._chain[0]
            nid = int(self._meta["next_layer"])
            new = Layer.create(
                self.directory, nid, old_head.nblocks, gen if contiguous else self._gen, gen
            )
            tag = np.uint64(gen << fmt.GEN_SHIFT)
            # blocks that may read differently now are marked changed (for delta queries)
            for layer in self._chain:
                if layer.id in ancestors:
                    break
                for a, b in layer.record_ranges(0, layer.nblocks):
                    for lo in range(a, b, _CHUNK):
                        hi = min(b, lo + _CHUNK)
                        touched = np.flatnonzero(layer.meta[lo:hi] != 0)
                        if touched.size:
                            new.ensure_map_space(lo, hi - lo)
                            new.meta[lo + touched] = tag
            new.sync()
            self._install_head(new, target, self._draft())
            self._complete(gen, contiguous)
            old_head.clean = True
            for _ in self._purge():
                pass
        finally:
            self._busy = False

    # --- deltas, integrity, stats -------------------------------------------------------
    def may_have_records(self, lba: int, n: int) -> bool:
        return any(
            layer.has_records(lba, min(lba + n, layer.nblocks))
            for layer in self._chain
            if layer.nblocks > lba
        )

    def changed_mask(self, since: int, lba: int, n: int) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        limit = np.uint64(since)
        for layer in self._chain:
            top = self._seen if layer is self._chain[0] else max(layer.generation, layer.seen)
            if top <= since:
                continue
            for a, b in layer.record_ranges(lba, min(lba + n, layer.nblocks)):
                mask[a - lba : b - lba] |= (layer.meta[a:b] >> np.uint64(fmt.GEN_SHIFT)) > limit
        return mask

    def scrub(self, offset: int = 0, length: int = 0) -> ScrubReport:
        steps = self.scrub_steps(offset, length)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                report: ScrubReport = stop.value
                return report

    def scrub_steps(self, offset: int = 0, length: int = 0) -> Generator[int, None, ScrubReport]:
        """Verify every data block of every layer in [offset, offset + length) (length 0:
        to the end); yields blocks checked so far."""
        lba, n = scrub_range(offset, length, self.size)
        named = [(self._layer_name(lid), layer) for lid, layer in self._layers.items()]
        report = yield from scrub_layers(named, lba, n)
        self.counters["checksum_errors"] += len(report.bad)
        return report

    def repair(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data).cast("B")
        lba, _ = check_range(offset, len(mv), self.size)
        fixed = repair_layers(list(self._layers.values()), lba, mv)
        self.counters["repaired_blocks"] += fixed
        return fixed

    def stats(self) -> dict[str, Any]:
        data = sum(layer.data_bytes() for layer in self._layers.values())
        maps = sum(layer.map_bytes() for layer in self._layers.values())
        return {
            "size": self.size,
            "generation": self._gen,
            "seen": self._seen,
            "epoch": self.epoch,
            "history": self.history,
            "layers": len(self._layers),
            "snapshots": sum(1 for v in self._meta["layers"].values() if v["snapshot"]),
            "allocated_bytes": data,
            "head_allocated_bytes": self._chain[0].data_bytes(),
            "metadata_bytes": maps,
            **self.counters,
        }
