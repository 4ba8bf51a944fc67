"""The replica store after a machine crash (power loss, kernel panic): what the last FLUSH
made durable survives, the page cache does not (docs/formats/replica-store.md, "Writes,
reads and crashes").

The model: a FileStore in a temporary directory runs a seeded random workload (writes of
1-8 blocks, WRITE_ZEROES, TRIM, a FLUSH every few operations, a snapshot now and then),
numbered as an engine numbers them. At every completed FLUSH (a snapshot flushes too, and
its new layer and metadata are synced) the directory is copied: the durable image D. At
the "power loss" the crashed image is built file by file, 4 KiB page by page: a page that
differs between D and the live file comes from one or the other at random (the kernel
writes dirty pages back in no set order); a file only one side has comes from that side.
A second store runs the same workload and does not crash: the healthy replica.

The crashed image is opened with another boot id (``store.reader.boot_id``) and:

(a) every block reads as its value at the last FLUSH or as a value written after it; only
    a block the open counted lost fails its checksum (a torn block whose data page is a hole
    while the head has a parent: its value is unknown) -- never a wrong value that
    verifies; the torn blocks the open adopted are counted, and scrub finds exactly the
    lost ones;
(b) copying into it what the healthy replica changed after the crashed one's generation,
    and what the crashed one itself changed after it, makes their checksum maps equal
    (rot blocks aside): the generation it reports names nothing it lacks;
(c) opened with the same boot id (a killed process: the page cache survived) the store
    recovers exactly as before: the live generation, every block as the live one.

fsync and fdatasync are no-ops here: durability is what the copies model.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import ChecksumError
from cargohold.protocol import extent_stream as xs
from cargohold.store import reader
from cargohold.store.base import DATA, block_crcs, runs
from cargohold.store.file_store import FileStore

NBLOCKS = 768  # three pages of map records and the header page
SIZE = NBLOCKS * BLOCK_SIZE
PAGE = 4096
SEEDS = range(240)
BOOT_A, BOOT_B = str(uuid.UUID(int=0xA)), str(uuid.UUID(int=0xB))


@pytest.fixture(autouse=True)
def no_syncs(monkeypatch):
    """Real syncs would only cost time: what is durable is what the copies say."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)


@pytest.fixture
def where(tmp_path) -> Iterator[pathlib.Path]:
    """A directory in memory (tmpfs) where there is one: creating and removing hundreds of
    replicas on a shared disk takes most of a minute (as in test_write_crashes)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="cargohold-power-", dir="/dev/shm")
        yield pathlib.Path(d)
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def boot(monkeypatch) -> list[str]:
    """The boot id the store sees: tests change ``boot[0]`` to "reboot" the machine."""
    current = [BOOT_A]
    monkeypatch.setattr(reader, "boot_id", lambda: current[0])
    return current


def value(g: int, b: int) -> bytes:
    """The content generation ``g`` writes into block ``b``: unique to the pair."""
    return struct.pack("<QQ", g, b) * (BLOCK_SIZE // 16)


ZEROS = bytes(BLOCK_SIZE)


@dataclass
class Model:
    """Per block: its value now, at the last FLUSH, and every value written since."""

    now: list[bytes] = field(default_factory=lambda: [ZEROS] * NBLOCKS)
    at_flush: list[bytes] = field(default_factory=lambda: [ZEROS] * NBLOCKS)
    since: dict[int, set[bytes]] = field(default_factory=dict)

    def set(self, b: int, v: bytes) -> None:
        self.now[b] = v
        self.since.setdefault(b, set()).add(v)

    def flushed(self) -> None:
        self.at_flush = list(self.now)
        self.since = {}

    def may_read(self, b: int, v: bytes) -> bool:
        return v == self.at_flush[b] or v in self.since.get(b, ())


def image(directory: str) -> dict[str, bytes]:
    """Every file of a replica directory, as bytes."""
    out = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def ops(rng: np.random.Generator, count: int) -> Iterator[tuple[str, int, int]]:
    """(kind, first block, blocks) of a random workload."""
    snaps = 0
    until_flush = int(rng.integers(2, 6))
    for _ in range(count):
        until_flush -= 1
        if until_flush <= 0:
            until_flush = int(rng.integers(2, 6))
            yield "flush", 0, 0
            continue
        r = rng.random()
        if r < 0.05 and snaps < 2:
            snaps += 1
            yield "snapshot", snaps, 0
            continue
        n = int(rng.integers(1, 9))
        lba = int(rng.integers(0, NBLOCKS - n + 1))
        yield ("write" if r < 0.75 else "zeroes" if r < 0.88 else "trim"), lba, n


def apply(store: FileStore, op: tuple[str, int, int], g: int) -> int:
    """Run one operation; -> the next generation."""
    kind, lba, n = op
    if kind == "flush":
        store.flush()
    elif kind == "snapshot":
        store.snapshot_create(f"s{lba}")
    elif kind == "write":
        data = b"".join(value(g, b) for b in range(lba, lba + n))
        store.write(lba * BLOCK_SIZE, data, generation=g)
        return g + 1
    elif kind == "zeroes":
        store.write_zeroes(lba * BLOCK_SIZE, n * BLOCK_SIZE, generation=g)
        return g + 1
    else:
        store.trim(lba * BLOCK_SIZE, n * BLOCK_SIZE, generation=g)
        return g + 1
    return g


@dataclass
class Run:
    live: FileStore
    healthy: FileStore
    durable: dict[str, bytes]  # D: the directory at the last completed FLUSH
    model: Model
    flushed_gen: int  # the generation at that FLUSH


def run(tmp: str, seed: int) -> Run:
    """The workload on the live store and on the healthy one, up to the crash point."""
    rng = np.random.default_rng(seed)
    live = FileStore.create(os.path.join(tmp, "live"), SIZE)
    healthy = FileStore.create(os.path.join(tmp, "healthy"), SIZE)
    todo = list(ops(rng, int(rng.integers(1, 40))))
    last = max((i for i, op in enumerate(todo) if op[0] in ("flush", "snapshot")), default=-1)
    durable = image(live.directory)
    model = Model()
    g, flushed_gen = 1, 0
    for i, op in enumerate(todo):
        apply(healthy, op, g)
        g_next = apply(live, op, g)
        kind, lba, n = op
        if kind in ("write", "zeroes", "trim"):
            for b in range(lba, lba + n):
                model.set(b, value(g, b) if kind == "write" else ZEROS)
        else:  # a FLUSH completed (a snapshot flushes, and syncs its new files)
            if i == last:  # the last one before the crash: D (earlier ones are overwritten)
                durable = image(live.directory)
            model.flushed()
            flushed_gen = live.generation
        g = g_next
    return Run(live, healthy, durable, model, flushed_gen)


def crash_image(r: Run, target: str, rng: np.random.Generator) -> None:
    """The directory a power loss leaves: D, with each page D and the live file disagree
    on taken from either at random; files only one side has come from that side."""
    live = image(r.live.directory)
    for layer in r.live._layers.values():  # the process dies with the machine
        layer.close()
    r.live._layers = {}
    os.makedirs(target)
    for name in sorted(set(live) | set(r.durable)):
        if name.endswith(".tmp") or name.startswith("."):
            continue
        old, new = r.durable.get(name), live.get(name)
        if old is None or new is None:
            out = pages(new if old is None else old)
        else:
            out = pages(new)
            was = pages(old.ljust(len(new), b"\0")[: len(new)])
            differ = np.flatnonzero((out != was).any(axis=1))
            back = differ[rng.random(differ.size) < 0.5]
            out[back] = was[back]
        write_sparse(os.path.join(target, name), out, len(new or old or b""))


def pages(blob: bytes) -> np.ndarray:
    """``blob`` as rows of 4 KiB pages (the last padded with zeros)."""
    buf = np.zeros(-(-len(blob) // PAGE) * PAGE, dtype=np.uint8)
    buf[: len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    return buf.reshape(-1, PAGE)


def write_sparse(path: str, rows: np.ndarray, size: int) -> None:
    """Pages into a new file of ``size`` bytes, zero pages left as holes (as the store
    leaves them)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for p in np.flatnonzero(rows.any(axis=1)).tolist():
            f.seek(p * PAGE)
            f.write(rows[p].tobytes()[: size - p * PAGE])


def read_all(store: FileStore) -> tuple[list[bytes | None], set[int]]:
    """Every block of the head (None where it fails its checksum), and those blocks."""
    out: list[bytes | None] = []
    rot = set()
    for b in range(NBLOCKS):
        try:
            out.append(bytes(store.read(b * BLOCK_SIZE, BLOCK_SIZE)))
        except ChecksumError:
            out.append(None)
            rot.add(b)
    return out, rot


def copy_blocks(src: FileStore, dst: FileStore, mask: np.ndarray) -> None:
    """Import into ``dst`` the content ``src`` has at the blocks of ``mask`` (data or zeros),
    as a rebuild's extent stream does."""
    kinds = src.resolve(0, NBLOCKS)
    extents = []
    for a, b in runs(mask):
        for s, e in runs(kinds[a:b] == DATA):
            data = src.read((a + s) * BLOCK_SIZE, (e - s) * BLOCK_SIZE)
            crcs = block_crcs(data)
            extents.append(
                xs.Extent(xs.KIND_DATA, a + s, e - s, memoryview(data), memoryview(crcs.tobytes()))
            )
        for s, e in runs(kinds[a:b] != DATA):
            extents.append(xs.Extent(xs.KIND_ZERO, a + s, e - s))
    extents.sort(key=lambda x: x.lba)
    header = xs.StreamHeader(0, SIZE, 0, src.generation)
    dst.import_stream(b"".join(bytes(p) for p in xs.encode(header, extents)))


def changed(store: FileStore, since: int) -> np.ndarray:
    return store.changed_mask(since, 0, NBLOCKS)


def test_power_loss_reports_only_what_it_holds(where, boot):
    """(a) and (b) over many seeds: blocks are old, new or rot; the generation a crashed
    replica reports lets a delta rebuild from it make it equal to a healthy replica."""
    bad_seeds = []
    rotten = adopted = 0
    for seed in SEEDS:
        tmp = str(where / str(seed))
        boot[0] = BOOT_A
        r = run(tmp, seed)
        crash_image(r, os.path.join(tmp, "crashed"), np.random.default_rng(seed + 10_000))
        boot[0] = BOOT_B  # the machine came back
        crashed = FileStore.open(os.path.join(tmp, "crashed"))
        # (a) every block: its value at the last FLUSH, one written after it, or rot
        got, rot = read_all(crashed)
        for b, v in enumerate(got):
            if v is not None:
                assert r.model.may_read(b, v), (seed, b)
        # (b) what the crashed replica claims to be complete through, it holds
        since = crashed.generation
        assert crashed.seen >= since and since <= r.flushed_gen, seed
        assert crashed.power_loss and crashed.durable == since, seed
        lost = crashed.stats()["lost_blocks"]
        assert lost == len(rot), (seed, lost, sorted(rot)[:4])
        assert not lost or len(crashed._chain) > 1, seed  # lost only above a parent
        assert {(b.layer, b.block) for b in crashed.scrub().bad} == {("head", b) for b in rot}
        rotten += len(rot)
        adopted += crashed.stats()["adopted_blocks"]
        copy_blocks(r.healthy, crashed, changed(r.healthy, since) | changed(crashed, since))
        want = r.healthy.checksums(0, SIZE)
        have = crashed.checksums(0, SIZE)
        differ = set(np.flatnonzero(want != have).tolist()) - rot
        if differ:
            bad_seeds.append((seed, since, r.flushed_gen, sorted(differ)[:4]))
        crashed.mark_current(max(crashed.seen, r.healthy.seen), r.healthy.history)
        assert not crashed.power_loss, seed
        crashed.close()
        r.healthy.close()
        shutil.rmtree(tmp)
    assert not bad_seeds, f"{len(bad_seeds)} seeds diverge, e.g. {bad_seeds[:3]}"
    assert adopted > 0 and rotten > 0  # the model does tear blocks, and loses a few


def test_a_killed_process_recovers_as_before(where, boot):
    """(c) the same boot: the page cache survived a killed process, the live files are what
    the disk holds, and the store opens at the live generation with every block as live."""
    for seed in range(0, len(SEEDS), 4):
        tmp = str(where / str(seed))
        r = run(tmp, seed)
        gen, seen = r.live.generation, r.live.seen
        live = image(r.live.directory)
        for layer in r.live._layers.values():
            layer.close()
        os.makedirs(os.path.join(tmp, "killed"))
        for name, blob in live.items():
            write_sparse(os.path.join(tmp, "killed", name), pages(blob), len(blob))
        killed = FileStore.open(os.path.join(tmp, "killed"))
        assert (killed.generation, killed.seen) == (gen, seen), seed
        assert not killed.power_loss and killed.stats()["lost_blocks"] == 0, seed
        got, rot = read_all(killed)
        assert not rot and got == r.model.now, seed
        killed.close()
        r.healthy.close()
        shutil.rmtree(tmp)
