"""The file store: one replica as a directory of layers, thin, checksummed, crash-safe.

Directory layout (docs/formats/replica-store.md):
    replica.meta          epoch, size, the layer tree and snapshot metadata (atomic rename)
    layer-NNNNNN.data     sparse block data of one layer
    layer-NNNNNN.map      mmap'd block map of one layer (state, generation, CRC32C)

Writes go to the head layer in an order that makes any crash safe (see ``write``): a block
written after the last FLUSH reads back as its old or its new content, never a mix, and its
checksum always verifies. Callers: the replica server; tests.

One class built in three modules, by role: ``layer_tree.LayerTree`` (the directory, the
metadata, the layer tree, generations) <- ``block_io.BlockIO`` (reads, writes, FLUSH) <-
``FileStore`` here (create and open, snapshots, deltas, scrub and repair, stats).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from cargohold.constants import BLOCK_SIZE, STORE_WRITE_CHUNK
from cargohold.errors import AlreadyExists, Busy, NotFound
from cargohold.store import format as fmt
from cargohold.store.base import ScrubReport, SnapshotInfo, check_range, check_size, scrub_range
from cargohold.store.block_io import BlockIO
from cargohold.store.integrity import recover_head, repair_layers, scrub_layers
from cargohold.store.layer import Layer, check_write_chunk, file_names, io_error
from cargohold.store.layer_tree import (
    META_FILE,
    head_header,
    machine_crashed,
    this_boot,
    write_atomic,
)

__all__ = ["META_FILE", "FileStore"]

_CHUNK = 1 << 16  # blocks per step of long operations (256 MiB of volume)


class FileStore(BlockIO):
    """A replica on a local filesystem (ext4, xfs: anything with sparse files and holes)."""

    # --- create / open / close --------------------------------------------------------
    @classmethod
    def create(
        cls, directory: str, size: int, *, write_chunk: int = STORE_WRITE_CHUNK, **labels: Any
    ) -> FileStore:
        """A new replica of ``size`` bytes in ``directory``; ``write_chunk``: bytes per
        ``pwrite`` of its large writes (``layer.pieces``; 0: each write in one)."""
        check_size(size)
        check_write_chunk(write_chunk)
        if os.path.exists(os.path.join(directory, META_FILE)):
            raise AlreadyExists(f"a replica already exists in {directory}")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise io_error(e, "create replica") from None
        layer = Layer.create(directory, 1, size // BLOCK_SIZE, generation=0, boot_id=this_boot())
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
            write_atomic(directory, META_FILE, fmt.encode_meta(meta))
        except Exception:
            layer.close()
            layer.unlink()
            raise
        store = cls(directory, meta, {1: layer})
        store.write_chunk = write_chunk
        store._mark_open()
        return store

    @classmethod
    def open(cls, directory: str, write_chunk: int = STORE_WRITE_CHUNK) -> FileStore:
        check_write_chunk(write_chunk)
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
        store.write_chunk = write_chunk
        head = store._chain[0]
        if not head.clean:  # a crash: of the machine (power lost), or of the process
            power = store._power_lost()
            if power:
                store._settle_power_loss()
            # torn blocks are adopted only on proof of another boot (both ids known): with
            # this kernel's unknown, the page cache may have survived, and a block failing
            # its check may be rot, so it stays reported (the generation still falls back)
            adopt = power and any(this_boot())
            r = recover_head(head, store._seen, adopt, has_parent=len(store._chain) > 1)
            store._seen = head.seen = r.top
            store.counters["recovered_blocks"] = r.settled
            store.counters["adopted_blocks"], store.counters["lost_blocks"] = r.adopted, r.lost
        store._mark_open()
        for _ in store._purge():  # finish a snapshot deletion that a crash or stop cut short
            pass
        return store

    @staticmethod
    def crashed_machine(directory: str) -> bool:
        """Whether opening this replica would recover from a machine crash (its head was
        not closed cleanly, under another boot): one header read, the store stays shut."""
        h = head_header(directory)
        return not h.clean and machine_crashed(h.boot_id)

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
            new = Layer.create(
                self.directory, lid, old.nblocks, self._gen, self._seen, **self._carried()
            )
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
                self.directory,
                nid,
                old_head.nblocks,
                gen if contiguous else self._gen,
                gen,
                **self._carried(),
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

    def changed_mask(self, since: int, lba: int, n: int, snapshot: str | None = None) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        limit = np.uint64(since)
        chain = (
            self._chain
            if snapshot is None
            else [self._layers[lid] for lid in self._ancestry(self._snapshot_layer(snapshot))]
        )
        head = self._chain[0]
        for layer in chain:
            top = self._seen if layer is head else max(layer.generation, layer.seen)
            if top <= since:
                continue
            for a, b in layer.record_ranges(lba, min(lba + n, layer.nblocks)):
                mask[a - lba : b - lba] |= (layer.meta[a:b] >> np.uint64(fmt.GEN_SHIFT)) > limit
        return mask

    def generation_map(self, since: int, lba: int, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.uint64)
        limit, one = np.uint64(since), np.uint64(1)
        head = self._chain[0]
        for layer in self._chain:
            top = self._seen if layer is head else max(layer.generation, layer.seen)
            if top <= since:
                continue
            for a, b in layer.record_ranges(lba, min(lba + n, layer.nblocks)):
                gens = layer.meta[a:b] >> np.uint64(fmt.GEN_SHIFT)
                hit = np.flatnonzero(gens > limit)  # few, usually: the rest costs one pass
                if not hit.size:
                    continue
                rank = gens[hit] << one
                if layer is head:  # a write claimed and not completed: pend != cur
                    rank |= (layer.cur[a:b][hit] == layer.pend[a:b][hit]).astype(np.uint64)
                else:
                    rank |= one
                at = hit + (a - lba)
                out[at] = np.maximum(out[at], rank)
        return out

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
            "durable": self.durable,
            "power_loss": self.power_loss,
            "epoch": self.epoch,
            "history": self.history,
            "layers": len(self._layers),
            "snapshots": sum(1 for v in self._meta["layers"].values() if v["snapshot"]),
            "allocated_bytes": data,
            "head_allocated_bytes": self._chain[0].data_bytes(),
            "metadata_bytes": maps,
            **self.counters,
        }
