"""A power loss in the middle of a snapshot deletion's fold (docs/formats/replica-store.md,
"Machine crashes"): the fold copies the deleted snapshot's blocks into its child layer
(the head, or the next snapshot's layer), data before records, and syncs only at its end;
the machine loses power after some of its steps, with writes going on between them.

The method is test_power_loss.py's: the directory at the last FLUSH (D), the live one at
the crash (L), each 4 KiB page that differs taken from either at random; the crashed image
is opened in another boot. Then every block of the head reads as its value at the last
FLUSH or one written after it, and only a block the open counted lost fails its check
(scrub finds exactly those, in the head); every snapshot left reads as a healthy replica's
same snapshot; and copying the blocks either side changed after the crashed replica's
generation makes it equal to the healthy replica, which ran the same operations and its
deletion whole.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import ChecksumError
from cargohold.store import layer as layer_mod
from cargohold.store.file_store import FileStore
from tests.unit.store import test_power_loss
from tests.unit.store.test_power_loss import (
    BOOT_A,
    BOOT_B,
    NBLOCKS,
    SIZE,
    ZEROS,
    Model,
    Run,
    apply,
    changed,
    copy_blocks,
    crash_image,
    image,
    read_all,
    value,
)

where = test_power_loss.where  # fixtures: tmpfs where there is one; the boot id seen
boot = test_power_loss.boot

SEEDS = range(80)


class Syncs:
    """What each file of the live replica held at its last fsync/fdatasync: the durable
    image D, file by file (a FLUSH syncs what the head wrote; a fold syncs the layer it
    writes into at its end, and whatever else the store chooses to sync)."""

    def __init__(self) -> None:
        self.watch = ""  # the live replica's directory
        self.files: dict[str, bytes] = {}

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if self.watch and os.path.dirname(path) == self.watch and os.path.isfile(path):
            with open(path, "rb") as f:
                self.files[os.path.basename(path)] = f.read()


@pytest.fixture
def syncs(monkeypatch) -> Syncs:
    s = Syncs()
    monkeypatch.setattr(os, "fsync", s)
    monkeypatch.setattr(os, "fdatasync", s)
    return s


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    """A fold step per 16 blocks (256 MiB otherwise): the crash lands inside the fold."""
    monkeypatch.setattr(layer_mod, "_MERGE_CHUNK", 16)


def _writes(rng: np.random.Generator, count: int) -> list[tuple[str, int, int]]:
    out = []
    for _ in range(count):
        r = rng.random()
        n = int(rng.integers(1, 17))
        lba = int(rng.integers(0, NBLOCKS - n + 1))
        out.append(("write" if r < 0.8 else "zeroes" if r < 0.9 else "trim", lba, n))
    return out


def _one(r: Run, op: tuple[str, int, int], g: int, live_only: bool = False) -> int:
    """One mutation on both stores (the live one only: ``live_only``) and in the model."""
    if not live_only:
        apply(r.healthy, op, g)
    g_next = apply(r.live, op, g)
    kind, lba, n = op
    for b in range(lba, lba + n):
        r.model.set(b, value(g, b) if kind == "write" else ZEROS)
    return g_next


def _flush(r: Run) -> None:
    r.live.flush()
    r.healthy.flush()
    r.model.flushed()
    r.flushed_gen = r.live.generation


def run_fold(tmp: str, seed: int, syncs: Syncs) -> tuple[Run, str, dict[str, list[bytes]], bool]:
    """Two snapshots with writes before, between and after them; then the deletion of one
    (the newest: folded into the head; the older: into the newer snapshot's layer), cut
    after a random number of its steps, with writes (and now and then a FLUSH) between
    them. -> the run, the snapshot deleted, each snapshot's content, whether the crash came
    before the fold's end."""
    rng = np.random.default_rng(seed)
    syncs.watch, syncs.files = os.path.join(tmp, "live"), {}
    live = FileStore.create(os.path.join(tmp, "live"), SIZE)
    healthy = FileStore.create(os.path.join(tmp, "healthy"), SIZE)
    r = Run(live, healthy, syncs.files, Model(), 0)
    g = 1
    snaps: dict[str, list[bytes]] = {}
    for name in ("s1", "s2"):
        for op in _writes(rng, int(rng.integers(20, 60))):
            g = _one(r, op, g)
        live.snapshot_create(name)
        healthy.snapshot_create(name)
        snaps[name] = list(r.model.now)
        _flush(r)  # a snapshot flushes and syncs its new files
    for op in _writes(rng, int(rng.integers(0, 30))):
        g = _one(r, op, g)
    if rng.random() < 0.5:
        _flush(r)
    victim = "s2" if rng.random() < 0.6 else "s1"
    steps = live.snapshot_delete_steps(victim)
    midway = True
    for _ in range(int(rng.integers(1, 40))):
        if next(steps, StopIteration) is StopIteration:
            midway = False
            break
        for op in _writes(rng, int(rng.integers(0, 3))):
            g = _one(r, op, g)
        if rng.random() < 0.1:
            _flush(r)
    healthy.snapshot_delete(victim)
    # the steps not taken are never taken: the machine dies here (steps stays suspended)
    r.live._busy = False
    return r, victim, snaps, midway


def _snapshot_blocks(store: FileStore, name: str) -> list[bytes | None]:
    out: list[bytes | None] = []
    for b in range(NBLOCKS):
        try:
            out.append(bytes(store.read(b * BLOCK_SIZE, BLOCK_SIZE, snapshot=name)))
        except ChecksumError:
            out.append(None)
    return out


def test_a_power_loss_in_the_middle_of_a_fold(where, boot, syncs):
    problems = []
    lost_total = adopted = 0
    cut = {"s1": 0, "s2": 0}
    for seed in SEEDS:
        tmp = str(where / str(seed))
        boot[0] = BOOT_A
        r, victim, snaps, midway = run_fold(tmp, seed, syncs)
        cut[victim] += midway
        syncs.watch = ""
        meta = image(r.live.directory)["replica.meta"]
        crash_image(r, os.path.join(tmp, "crashed"), np.random.default_rng(seed + 20_000))
        # the metadata is replaced whole and synced (write_atomic) when the deletion
        # begins, before the fold: the crash finds the deletion's, never a mix of pages
        with open(os.path.join(tmp, "crashed", "replica.meta"), "wb") as f:
            f.write(meta)
        boot[0] = BOOT_B
        crashed = FileStore.open(os.path.join(tmp, "crashed"))
        got, rot = read_all(crashed)
        wrong = [b for b, v in enumerate(got) if v is not None and not r.model.may_read(b, v)]
        lost = crashed.stats()["lost_blocks"]
        lost_total += lost
        adopted += crashed.stats()["adopted_blocks"]
        scrubbed = {(b.layer, b.block) for b in crashed.scrub().bad}
        left = {s.name for s in crashed.snapshot_list()}
        snap_wrong = {
            n: [b for b, v in enumerate(_snapshot_blocks(crashed, n)) if v != snaps[n][b]]
            for n in sorted(left)
        }
        since = crashed.generation
        copy_blocks(r.healthy, crashed, changed(r.healthy, since) | changed(crashed, since))
        differ = (
            set(np.flatnonzero(r.healthy.checksums(0, SIZE) != crashed.checksums(0, SIZE)).tolist())
            - rot
        )
        story = dict(
            seed=seed,
            victim=victim,
            left=sorted(left),
            wrong=wrong[:4],
            rot=sorted(rot)[:4],
            lost=lost,
            scrub=sorted(scrubbed)[:4],
            snap_wrong={n: v[:4] for n, v in snap_wrong.items() if v},
            differ=sorted(differ)[:4],
        )
        if (
            wrong
            or lost != len(rot)
            or scrubbed != {("head", b) for b in rot}
            or any(snap_wrong.values())
            or differ
        ):
            problems.append(story)
        crashed.close()
        r.healthy.close()
        shutil.rmtree(tmp)
    assert not problems, f"{len(problems)} seeds fail, e.g. {problems[:3]}"
    # the crash does land inside folds of both kinds, and tears blocks
    assert min(cut.values()) >= 10 and adopted > 0, (cut, adopted)
