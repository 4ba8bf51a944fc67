"""The file store's own promises: thin, zero reads without I/O, checksums, scrub, repair,
snapshots without copying, huge volumes in little RAM, the on-disk format."""

from __future__ import annotations

import os
import pathlib
import shutil
import time

import numpy as np
import pytest

from cargohold.constants import BLOCK_SIZE, GIB, MIB, TIB
from cargohold.errors import (
    AlreadyExists,
    ChecksumError,
    FormatError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from cargohold.store import format as fmt
from cargohold.store.file_store import FileStore
from cargohold.store.layer import Layer
from cargohold.store.memory_store import MemoryStore

SAMPLE = pathlib.Path(__file__).parents[2] / "data" / "replica-store-sample"


def blocks(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n * BLOCK_SIZE, dtype=np.uint8).tobytes()


@pytest.fixture
def store(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 1 * GIB)
    yield s
    s.close()


def test_thin_space_follows_data_not_size(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 1 * TIB)
    assert s.stats()["allocated_bytes"] == 0
    s.write(512 * GIB, blocks(256))  # 1 MiB in the middle of a 1 TiB volume
    s.flush()
    st = s.stats()
    assert st["allocated_bytes"] == 1 * MIB
    assert st["metadata_bytes"] < 64 * 1024  # one header + one map page
    s.close()
    used = sum(f.stat().st_blocks * 512 for f in (tmp_path / "r").iterdir())
    assert used < 2 * MIB


def test_unwritten_blocks_read_as_zeros_without_touching_data_files(store, monkeypatch):
    store.write(0, blocks(1))
    calls = []
    monkeypatch.setattr(Layer, "pread_into", lambda *a: calls.append(a))
    assert store.read(64 * MIB, 8 * MIB) == bytes(8 * MIB)
    assert calls == []


def test_trim_and_write_zeroes_release_space(store):
    store.write(0, blocks(2048))  # 8 MiB
    store.flush()
    assert store.stats()["allocated_bytes"] == 8 * MIB
    store.trim(0, 4 * MIB)
    store.write_zeroes(4 * MIB, 2 * MIB)
    assert store.stats()["allocated_bytes"] == 2 * MIB
    assert store.read(0, 6 * MIB) == bytes(6 * MIB)
    assert [e[2] for e in store.extents(0, 16 * MIB)] == [2, 1, 0]  # ZERO, DATA, HOLE


def test_alignment_and_range_errors_are_clear(store):
    with pytest.raises(InvalidArgument, match="multiples of 4096"):
        store.write(100, b"x" * 4096)
    with pytest.raises(InvalidArgument, match="beyond the size"):
        store.read(1 * GIB, 4096)
    with pytest.raises(Unsupported, match="shrinking"):
        store.expand(4096)
    with pytest.raises(InvalidArgument, match="bad snapshot name"):
        store.snapshot_create("../etc")


def test_flipped_byte_is_named_on_read_listed_by_scrub_and_repaired(tmp_path):
    path = tmp_path / "r"
    s = FileStore.create(str(path), 64 * MIB)
    good = blocks(16, seed=3)
    s.write(0, good)
    s.snapshot_create("before")
    s.write(40 * BLOCK_SIZE, good[:BLOCK_SIZE])
    s.close()
    # rot: flip a byte of block 5 in the snapshot's layer, and of block 40 in the head
    with open(path / "layer-000001.data", "r+b") as f:
        f.seek(fmt.HEADER_SIZE + 5 * BLOCK_SIZE + 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    with open(path / "layer-000002.data", "r+b") as f:
        f.seek(fmt.HEADER_SIZE + 40 * BLOCK_SIZE)
        f.write(b"\0")
    s = FileStore.open(str(path))
    with pytest.raises(ChecksumError) as ei:
        s.read(0, 16 * BLOCK_SIZE)
    assert ei.value.detail["blocks"] == [5]
    assert "block 5" in str(ei.value) and "before" in str(ei.value)
    with pytest.raises(ChecksumError) as ei:  # the one-block read path too
        s.read(5 * BLOCK_SIZE, BLOCK_SIZE)
    assert ei.value.detail["blocks"] == [5]
    with pytest.raises(ChecksumError, match="block 40"):
        s.read(40 * BLOCK_SIZE, BLOCK_SIZE)
    report = s.scrub()
    assert sorted((b.layer, b.block) for b in report.bad) == [("before", 5), ("head", 40)]
    assert report.checked_blocks == 17
    assert s.stats()["checksum_errors"] >= 3
    # repair with the good content (what the engine would fetch from a healthy replica)
    assert s.repair(5 * BLOCK_SIZE, good[5 * BLOCK_SIZE : 6 * BLOCK_SIZE]) == 1
    assert s.repair(40 * BLOCK_SIZE, good[:BLOCK_SIZE]) == 1
    # repair refuses data that does not match the recorded checksum
    assert s.repair(5 * BLOCK_SIZE, bytes(BLOCK_SIZE)) == 0
    assert s.read(0, 16 * BLOCK_SIZE) == good
    assert s.scrub().bad == ()
    s.close()


def test_snapshot_is_o1_and_copies_no_data(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 4 * GIB)
    for i in range(16):
        s.write(i * 64 * MIB, blocks(1024, seed=i))  # 64 MiB written in 4 MiB pieces
    s.flush()
    before = s.stats()["allocated_bytes"]
    t0 = time.perf_counter()
    info = s.snapshot_create("s1", {"app": "db"})
    elapsed = time.perf_counter() - t0
    assert s.stats()["allocated_bytes"] == before  # nothing copied
    assert info.size_bytes == before and info.labels == {"app": "db"}
    assert elapsed < 1.0
    assert [x.name for x in s.snapshot_list()] == ["s1"]
    with pytest.raises(AlreadyExists):
        s.snapshot_create("s1")
    with pytest.raises(NotFound):
        s.snapshot_delete("nope")
    s.close()


def test_snapshot_delete_merges_online_and_keeps_every_view(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 64 * MIB)
    a, b, c = blocks(4, 1), blocks(4, 2), blocks(4, 3)
    s.write(0, a)
    s.snapshot_create("one")
    s.write(4 * BLOCK_SIZE, b)
    s.snapshot_create("two")
    s.write(0, c)
    steps = s.snapshot_delete_steps("one")
    next(steps)
    # I/O between merge steps
    s.write(8 * BLOCK_SIZE, c)
    for _ in steps:
        pass
    assert [x.name for x in s.snapshot_list()] == ["two"]
    assert s.read(0, 12 * BLOCK_SIZE, snapshot="two") == a + b + bytes(4 * BLOCK_SIZE)
    assert s.read(0, 12 * BLOCK_SIZE) == c + b + c
    assert s.stats()["layers"] == 2
    s.close()
    s = FileStore.open(str(tmp_path / "r"))
    assert s.read(0, 12 * BLOCK_SIZE) == c + b + c
    s.close()


def test_delta_since_a_generation_is_found_without_reading_data(tmp_path, monkeypatch):
    s = FileStore.create(str(tmp_path / "r"), 1 * TIB)
    s.write(0, blocks(256))
    s.write(700 * GIB, blocks(1))
    g = s.generation
    s.write(3 * GIB, blocks(2))
    s.write_zeroes(700 * GIB, BLOCK_SIZE)
    calls = []
    monkeypatch.setattr(Layer, "pread_into", lambda *a: calls.append(a))
    t0 = time.perf_counter()
    assert s.changed_since(g) == [(3 * GIB, 2 * BLOCK_SIZE), (700 * GIB, BLOCK_SIZE)]
    assert time.perf_counter() - t0 < 2.0
    assert calls == []
    s.close()


def test_expand_keeps_data_and_new_space_is_thin(store):
    store.write(0, blocks(4))
    store.expand(3 * GIB)
    assert store.size == 3 * GIB
    assert store.read(0, 4 * BLOCK_SIZE) == blocks(4)
    assert store.read(3 * GIB - MIB, MIB) == bytes(MIB)
    store.write(3 * GIB - BLOCK_SIZE, blocks(1, 9))
    assert store.read(3 * GIB - BLOCK_SIZE, BLOCK_SIZE) == blocks(1, 9)


def test_generation_and_epoch_persist(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 64 * MIB)
    for i in range(5):
        s.write(i * BLOCK_SIZE, blocks(1, i))
    s.accept_epoch(7)
    s.close()
    s = FileStore.open(str(tmp_path / "r"))
    assert (s.generation, s.epoch) == (5, 7)
    s.close()


def _rss_anon_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_16_tib_volume_in_little_ram(tmp_path):
    """A 16 TiB replica: written at its ends and across 4 TiB segment boundaries, with
    anonymous RAM growing by ~1 MiB per TiB (the map-page allocation index)."""
    before = _rss_anon_kib()
    s = FileStore.create(str(tmp_path / "r"), 16 * TIB)
    spots = [0, 4 * TIB - BLOCK_SIZE, 8 * TIB - 2 * BLOCK_SIZE, 16 * TIB - 4 * BLOCK_SIZE]
    for i, off in enumerate(spots):
        s.write(off, blocks(4, i))  # the 2nd and 3rd writes straddle segment boundaries
    s.flush()
    for i, off in enumerate(spots):
        assert s.read(off, 4 * BLOCK_SIZE) == blocks(4, i)
    assert s.changed_since(0) == [(off, 4 * BLOCK_SIZE) for off in spots]
    assert s.scrub().checked_blocks == 16
    grown_mib = (_rss_anon_kib() - before) / 1024
    assert grown_mib < 16 + 8, f"anonymous RSS grew by {grown_mib:.1f} MiB for 16 TiB"
    s.close()
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == [
        "layer-000001.data",
        "layer-000001.data.1",
        "layer-000001.data.2",
        "layer-000001.data.3",
        "layer-000001.map",
        "replica.meta",
    ]
    s = FileStore.open(str(tmp_path / "r"))
    assert s.read(spots[-1], 4 * BLOCK_SIZE) == blocks(4, 3)
    s.close()


def test_checked_in_sample_decodes(tmp_path):
    """tests/data/replica-store-sample is the example of docs/formats/replica-store.md."""
    meta = fmt.decode_meta((SAMPLE / "replica.meta").read_bytes())
    assert meta["size"] == 1 * MIB and meta["head"] == 2
    assert meta["layers"]["1"]["snapshot"]["name"] == "first"
    h = fmt.decode_map_header((SAMPLE / "layer-000001.map").read_bytes()[: fmt.HEADER_SIZE])
    assert (h.nblocks, h.generation) == (256, 2)
    recs = np.frombuffer(
        (SAMPLE / "layer-000002.map").read_bytes(), dtype=fmt.RECORD, offset=fmt.HEADER_SIZE
    )
    assert int(recs["meta"][1]) == (3 << fmt.GEN_SHIFT) | fmt.DATA
    assert int(recs["meta"][2]) == (4 << fmt.GEN_SHIFT) | fmt.ZERO
    shutil.copytree(SAMPLE, tmp_path / "r")
    s = FileStore.open(str(tmp_path / "r"))
    assert s.read(0, 3 * BLOCK_SIZE) == b"A" * BLOCK_SIZE + b"C" * BLOCK_SIZE + bytes(BLOCK_SIZE)
    assert s.read(0, 3 * BLOCK_SIZE, snapshot="first") == b"A" * BLOCK_SIZE + b"B" * 2 * BLOCK_SIZE
    assert s.generation == 4
    s.close()


def test_corrupt_headers_are_format_errors(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "r")
    p = tmp_path / "r" / "layer-000002.map"
    data = bytearray(p.read_bytes())
    data[0:8] = b"NOTAMAP!"
    p.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="bad magic"):
        FileStore.open(str(tmp_path / "r"))
    m = tmp_path / "r" / "replica.meta"
    m.write_bytes(m.read_bytes()[:-3])
    with pytest.raises(FormatError, match="body length"):
        FileStore.open(str(tmp_path / "r"))


def test_memory_twin_reports_corruption_like_the_file_store():
    s = MemoryStore(16 * BLOCK_SIZE)
    s.write(0, blocks(4))
    s.snapshot_create("a")
    s.corrupt(2, snapshot="a")
    with pytest.raises(ChecksumError) as ei:
        s.read(0, 4 * BLOCK_SIZE)
    assert ei.value.detail["blocks"] == [2]
    assert [(b.layer, b.block) for b in s.scrub().bad] == [("a", 2)]
    assert s.repair(2 * BLOCK_SIZE, blocks(4)[2 * BLOCK_SIZE : 3 * BLOCK_SIZE]) == 1
    assert s.read(0, 4 * BLOCK_SIZE) == blocks(4)


def test_leftovers_of_an_interrupted_operation_are_removed(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 64 * MIB)
    s.close()
    (tmp_path / "r" / "layer-000009.data").write_bytes(b"junk")
    (tmp_path / "r" / "replica.meta.tmp").write_bytes(b"junk")
    FileStore.open(str(tmp_path / "r")).close()
    assert sorted(os.listdir(tmp_path / "r")) == [
        "layer-000001.data",
        "layer-000001.map",
        "replica.meta",
    ]


def test_a_snapshot_deletion_cut_short_is_finished_on_open(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 1 * GIB)
    for i in range(4):  # data in four 256 MiB chunks, so the merge takes several steps
        s.write(i * 256 * MIB, blocks(8, i))
    s.snapshot_create("old")
    s.write(0, blocks(1, 9))
    steps = s.snapshot_delete_steps("old")
    next(steps)  # one chunk merged, then the server stops
    s.close()
    s = FileStore.open(str(tmp_path / "r"))
    assert s.snapshot_list() == [] and s.stats()["layers"] == 1
    assert s.read(0, BLOCK_SIZE) == blocks(1, 9)
    for i in range(1, 4):
        assert s.read(i * 256 * MIB, 8 * BLOCK_SIZE) == blocks(8, i)
    s.close()


@pytest.mark.parametrize("twin", [False, True])
def test_mark_current_below_a_forks_generations_only_with_reset(store, twin):
    """A replica that took a fenced engine's writes (a fork) has seen generations the new
    engine never handed out; after a full rebuild it is marked current at the new
    engine's generation — refused without ``reset``, so a delta rebuild cannot lose them."""
    from cargohold.store.memory_store import MemoryStore

    s = MemoryStore(store.size) if twin else store
    for g in range(1, 101):
        s.write((g % 8) * 4096, blocks(1, g), generation=g)
    assert s.seen == 100
    with pytest.raises(InvalidArgument, match="below the newest this replica has seen, 100"):
        s.mark_current(50, [[1, 1], [2, 40]])
    s.trim(0, s.size)
    s.mark_current(50, [[1, 1], [2, 40]], reset=True)
    assert (s.generation, s.seen) == (50, 50)
    s.write(0, blocks(1, 7), generation=51)
    assert (s.generation, s.seen) == (51, 51)
