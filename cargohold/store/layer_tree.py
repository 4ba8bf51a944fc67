"""A file-store replica's directory, its layer tree and its generations: the base of
``FileStore`` (file_store.py), never used alone.

``replica.meta`` (docs/formats/replica-store.md) holds the epoch, the size, the history and
the tree of layers. Every change to it is a draft (``_draft``) made durable by an atomic
rename (``_commit``) before memory follows, so a failed write (a full disk) leaves memory
agreeing with the disk. The head layer takes the writes; snapshots are the read-only layers
below it. Generations: ``_claim`` numbers a mutation, ``_complete`` moves "complete through"
only when nothing before it is missing, ``mark_current`` after a rebuild.
"""

from __future__ import annotations

import copy
import os
import uuid
from typing import Any

from cargohold.durable import write_atomic as durable_write
from cargohold.errors import InvalidArgument, NotFound
from cargohold.store import format as fmt
from cargohold.store import reader
from cargohold.store.base import ReplicaStore, check_history
from cargohold.store.layer import Layer, io_error, map_path

META_FILE = "replica.meta"


def write_atomic(directory: str, name: str, blob: bytes) -> None:
    """Replace ``name`` with ``blob`` atomically (tmp + fsync + rename + fsync of the dir).
    A failure (a full disk, say) leaves the old file in place and raises NoSpace/IOError."""
    try:
        durable_write(os.path.join(directory, name), blob)
    except OSError as e:
        raise io_error(e, f"write {name}") from None


def this_boot() -> bytes:
    """The running kernel's boot id (``reader.boot_id``) as 16 bytes; zeros if unknown."""
    try:
        return uuid.UUID(reader.boot_id()).bytes
    except ValueError:
        return bytes(16)


def machine_crashed(stored: bytes | None) -> bool:
    """Whether the unclean shutdown an open finds was a machine crash (the page cache
    lost), from the head header's boot id: kept and not this kernel's, or either unknown.
    A header without one (older code wrote it) is taken for a killed process."""
    if stored is None:
        return False
    now = this_boot()
    return stored != now or not any(now)


def head_header(directory: str) -> fmt.MapHeader:
    """The head layer's map header, read without opening the store (a cheap look)."""
    path = os.path.join(directory, META_FILE)
    with open(path, "rb") as f:
        meta = fmt.decode_meta(f.read(), path)
    mpath = map_path(directory, int(meta["head"]))
    with open(mpath, "rb") as f:
        return fmt.decode_map_header(f.read(fmt.HEADER_SIZE), mpath)


class LayerTree(ReplicaStore):
    """The directory, metadata, layer tree and generations of a ``FileStore``."""

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
        self._era = 0  # bumped by mark_current: a FLUSH begun before it makes nothing durable
        self._durable = head.durable  # the head header's, kept here too (FLUSH compares)
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
                "adopted_blocks",
                "lost_blocks",
            ),
            0,
        )

    def _mark_open(self) -> None:
        """Opened: not clean, this kernel's boot id, synced; then everything is on disk, so
        the store is durable through its generation."""
        head = self._chain[0]
        head.clean = False
        head.durable = min(head.durable, self._gen)
        head.boot_id = this_boot()
        head.sync()
        head.durable = self._durable = self._gen

    def _power_lost(self) -> bool:
        return machine_crashed(self._chain[0].boot_id)

    def _settle_power_loss(self) -> int:
        """After a machine crash: complete through no more than the last completed FLUSH
        made durable, and the power-loss flag set until ``mark_current``. -> the generation.
        Durable with the recovery's sync (``integrity.recover_head``)."""
        head = self._chain[0]
        self._gen = head.generation = min(self._gen, head.durable)
        head.power_loss = True
        return self._gen

    @property
    def durable(self) -> int:
        return min(self._durable, self._gen)

    @property
    def power_loss(self) -> bool:
        return bool(self._chain) and self._chain[0].power_loss

    def durable_mark(self) -> tuple[int, int]:
        return self._era, self._gen

    def flushed(self, mark: Any) -> None:
        era, g = mark
        if era == self._era and g > self._durable and self._chain:
            self._durable = g = min(g, self._gen)
            self._chain[0].durable = g

    def _carried(self) -> dict[str, Any]:
        """The header fields a new head takes over from the head (snapshot, revert)."""
        head = self._chain[0]
        return {"durable": head.durable, "boot_id": head.boot_id, "power_loss": head.power_loss}

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
        write_atomic(self.directory, META_FILE, fmt.encode_meta(meta))
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
        history = self._meta.get("history", [])
        if not history or history[-1][0] != self.epoch:
            # the first mutation of a new epoch: where this epoch's part of history begins,
            # durable before the mutation (engines compare histories like Raft's terms)
            meta = self._draft()
            meta["history"] = [*history, [self.epoch, g]]
            self._commit(meta)
        return g, self._claim_next(g)

    def _epoch_recorded(self) -> bool:
        """Whether the history already records the current epoch: then ``_claim`` of a
        caller's number above every one seen records nothing first and is ``_claim_next``
        (the short way of one-block writes, ``BlockIO._write_blocks``)."""
        history = self._meta.get("history")
        return history is not None and len(history) > 0 and history[-1][0] == self.epoch

    def _claim_next(self, g: int) -> bool:
        """``_claim`` of a number above every one seen, in an epoch the history records
        (``_epoch_recorded``). -> whether it continues the sequence."""
        contiguous = self._gen == self._seen and g == self._gen + 1
        self._seen = g
        self._chain[0].seen = g
        return contiguous

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
        from (``history``: [[epoch, first generation], ...]). Durable before returning
        (``durable`` is ``generation``; the power-loss flag is cleared).
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
        self._gen = self._seen = self._durable = g
        self._era += 1
        head = self._chain[0]
        head.generation = head.seen = head.durable = g
        head.power_loss = False
        try:
            head.sync()
        except OSError as e:
            raise io_error(e, "mark current") from None
