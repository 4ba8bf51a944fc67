"""A standby's two library needs (docs/disaster-recovery.md): the delta between two backups'
chunk maps (what an apply fetches and writes) and pins (what the source may not delete)."""

from __future__ import annotations

import os
import time

import pytest

from cargohold.backup.chunk_map import ChunkMap, delta
from cargohold.backup.format import BLOCK, CELL
from cargohold.backup.leases import pin_name
from cargohold.errors import Busy, InvalidArgument
from tests.unit.backup.support import MiB, backup_full, new_repo, restore, volume


def _apply(repo, base: bytearray, old_id: str, new_id: str) -> tuple[bytearray, int, int]:
    """What the engine's apply does, on bytes: -> (result, changed bytes, fetched bytes)."""
    _, _, old_map = repo.manifest(old_id)
    r = repo.restore_reader(new_id)
    d = delta(old_map, r.map)
    r.map = d.data
    out = bytearray(base)
    out[len(out) :] = bytes(r.info.size - len(out))
    for off, data in r.read_all():
        out[off : off + len(data)] = data
    for off, length in d.zeros:
        out[off : off + length] = bytes(length)
    return out, d.changed_bytes, r.bytes_fetched


def test_an_incremental_delta_is_its_changed_blocks_only() -> None:
    repo = new_repo()
    v1 = volume(12 * MiB)
    a = backup_full(repo, v1)
    v2 = bytearray(v1)
    w = repo.start_backup("vol", "vol-id", len(v2), "s2", 2, {}, a.id)
    for off in (4096, CELL + 40960, CELL + 45056):
        v2[off : off + 4096] = os.urandom(4096)
        w.write(off, bytes(v2[off : off + 4096]))
    v2[9 * MiB : 10 * MiB] = bytes(MiB)
    w.zero(9 * MiB, MiB)
    b = w.commit()
    got, changed, fetched = _apply(repo, v1, a.id, b.id)
    assert got == v2 == restore(repo, b.id)
    assert changed == 3 * 4096 + MiB  # three written blocks, 1 MiB that became zeros
    assert 0 < fetched < 3 * 4096 + 1024  # two small chunks (compressed random 4 KiB blocks)


def test_full_backups_differ_by_whole_cells_and_equal_ones_by_nothing() -> None:
    repo = new_repo()
    v1 = volume(16 * MiB)
    a = backup_full(repo, v1)
    v2 = bytearray(v1)
    v2[5 * MiB : 5 * MiB + 4096] = os.urandom(4096)
    b = backup_full(repo, v2)  # full: the unchanged cells dedup to the same chunk ids
    got, changed, _ = _apply(repo, v1, a.id, b.id)
    assert got == v2 and changed == CELL
    c = backup_full(repo, v2)
    _, changed, fetched = _apply(repo, v2, b.id, c.id)
    assert changed == 0 and fetched == 0


def test_a_grown_source_and_a_shrunk_one() -> None:
    repo = new_repo()
    v1 = volume(8 * MiB)
    a = backup_full(repo, v1)
    v2 = bytearray(v1) + bytearray(volume(4 * MiB, seed=7))
    b = backup_full(repo, v2)
    got, changed, _ = _apply(repo, v1, a.id, b.id)
    assert got == v2 and changed == 4 * MiB
    with pytest.raises(InvalidArgument):
        delta(ChunkMap(16 * MiB), ChunkMap(8 * MiB))


def test_map_level_delta_block_by_block() -> None:
    old, new = ChunkMap(2 * CELL), ChunkMap(2 * CELL)
    x, y = b"x" * 32, b"y" * 32
    old.put(0, 8 * BLOCK, x, 0)
    new.put(0, 4 * BLOCK, x, 0)  # same bytes of the same chunk
    new.put(4 * BLOCK, 2 * BLOCK, y, 0)  # other data
    # blocks 6, 7: zeros now
    new.put(CELL, BLOCK, y, BLOCK)  # data where there were zeros
    d = delta(old, new)
    assert [(e.offset, e.length, e.chunk, e.coff) for e in d.data.extents()] == [
        (4 * BLOCK, 2 * BLOCK, y, 0),
        (CELL, BLOCK, y, BLOCK),
    ]
    assert d.zeros == [(6 * BLOCK, 2 * BLOCK)]
    assert d.changed_bytes == 5 * BLOCK and d.data_bytes == 3 * BLOCK


def test_a_pinned_backup_is_not_deleted_until_unpinned_or_expired() -> None:
    repo = new_repo()
    a = backup_full(repo, volume(4 * MiB))
    b = backup_full(repo, volume(4 * MiB, seed=2))
    before = dict(repo.target.stats)
    repo.pin("standby-uid-1", [a.id, b.id], ttl=60)
    assert repo.target.stats["put"] == before.get("put", 0) + 1  # a pin is one PUT
    assert repo.pinned() == {a.id: [pin_name("standby-uid-1")], b.id: [pin_name("standby-uid-1")]}
    with pytest.raises(Busy, match="pinned by a standby"):
        repo.delete(a.id)
    assert [x.id for x in repo.backups()] == [a.id, b.id]
    repo.pin("standby-uid-1", [b.id], ttl=60)  # moved on: a is free
    repo.delete(a.id)
    with pytest.raises(Busy):
        repo.delete(b.id)
    repo.unpin("standby-uid-1")
    repo.delete(b.id)
    assert repo.backups() == []


def test_an_expired_pin_pins_nothing_and_force_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = new_repo()
    a = backup_full(repo, volume(4 * MiB))
    repo.pin("s", [a.id], ttl=1)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert repo.pinned() == {}
    monkeypatch.setattr(time, "time", real)
    with pytest.raises(Busy):
        repo.delete(a.id)
    repo.delete(a.id, force=True)
    assert repo.backups() == []


def test_a_pin_does_not_hold_gc_back() -> None:
    repo = new_repo()
    a = backup_full(repo, volume(4 * MiB))
    b = backup_full(repo, volume(4 * MiB, seed=3))
    repo.delete(a.id)
    repo.pin("s", [b.id], ttl=600)  # renewed forever by a live standby
    out = repo.gc()
    assert out["deferred"] is False and out["packs_deleted"] >= 1
    assert restore(repo, b.id) == volume(4 * MiB, seed=3)  # the pinned one is intact
