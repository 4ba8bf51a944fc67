"""GC (mark and sweep with leases) and verify (structure, tags, chunk ids), with tampering."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.backup import gc
from cargohold.backup.repository import Repository
from cargohold.backup.targets import MemoryTarget
from cargohold.backup.verify import verify
from cargohold.errors import Busy, ChecksumError, NotFound
from tests.unit.backup.support import (
    KEY,
    MiB,
    backup_full,
    new_repo,
    random_volume,
    restore,
    volume,
)


def packs(t: MemoryTarget) -> set[str]:
    return {k for k in t.objects if k.startswith("packs/")}


def test_verify_a_healthy_repository() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    a = backup_full(repo, volume(12 * MiB))
    backup_full(repo, volume(12 * MiB, seed=2), parent=a.id)
    rep = verify(repo, read_data=True)
    assert rep.ok, rep.errors
    assert rep.backups == 2 and rep.chunks == 6 and rep.blobs_read == 6 and rep.bytes_read > 0
    one = verify(repo, backup=a.id)
    assert one.ok and one.backups == 1 and one.chunks == 3


def test_a_flipped_byte_in_a_pack_is_named_by_verify_and_restore() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    info = backup_full(repo, random_volume(8 * MiB))
    (pack,) = packs(t)
    blob = bytearray(t.objects[pack])
    blob[5000] ^= 0x40
    t.objects[pack] = bytes(blob)
    assert verify(repo).ok  # structure only: the bytes are not read
    rep = verify(repo, read_data=True)
    assert not rep.ok and len(rep.bad_chunks) == 1
    bad = rep.bad_chunks[0]
    assert bad["object"] == pack and bad["chunk"] in rep.errors[0] and info.id in rep.errors[0]
    with pytest.raises(ChecksumError) as e:
        restore(repo, info.id)
    assert bad["chunk"] in str(e.value) and pack in str(e.value)
    assert e.value.detail == {"chunk": bad["chunk"], "object": pack}


def test_a_deleted_pack_names_the_missing_chunks() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)  # one pack per chunk
    info = backup_full(repo, random_volume(12 * MiB))
    gone = sorted(packs(t))[0]
    del t.objects[gone]
    rep = verify(repo)
    assert not rep.ok and len(rep.missing_chunks) == 1 and gone in rep.errors[0]
    with pytest.raises(NotFound, match=gone):
        restore(repo, info.id)


def test_damaged_metadata_is_named() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    info = backup_full(repo, volume(4 * MiB))
    name = "backups/" + info.id
    t.objects[name] = t.objects[name][:-3]
    rep = verify(repo)
    assert not rep.ok and name in rep.bad_objects and "authentication failed" in rep.errors[0]
    t.objects["catalog"] = b"CHBKC\x09\x00\x00" + t.objects["catalog"][8:]
    rep = verify(repo)
    assert "catalog" in rep.bad_objects and "version 9" in " ".join(rep.errors)


def test_gc_frees_what_no_backup_references_and_keeps_the_rest() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)
    keep_data = random_volume(8 * MiB)
    drop = backup_full(repo, random_volume(8 * MiB), "drop")
    keep = backup_full(repo, keep_data, "keep")
    before = packs(t)
    assert len(before) == 4
    r = repo.gc()
    assert r["packs_deleted"] == 0 and r["chunks_live"] == 4 and not r["deferred"]
    repo.delete(drop.id)
    r = repo.gc()
    assert r["packs_deleted"] == 2 and r["bytes_freed"] > 8 * MiB and r["packs_pending"] == 0
    assert len(packs(t)) == 2 and r["chunks_live"] == 2
    assert len([k for k in t.objects if k.startswith("index/")]) == 1  # merged
    assert restore(repo, keep.id) == keep_data
    assert verify(repo, read_data=True).ok
    # a new backup of the same data reuses what survived, not what was swept
    again = backup_full(repo, keep_data, "again")
    assert again.chunks_new == 0


def test_gc_deletes_orphans_of_a_crashed_writer_but_never_what_a_leased_writer_reuses() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)
    old_data = random_volume(8 * MiB)
    old = backup_full(repo, old_data, "old")
    # a writer starts and reuses old's chunks (dedup) while old is deleted and GC runs
    w = repo.start_backup("new", "new", len(old_data), "s", 1, {}, None)
    w.write(0, bytes(old_data))
    repo.delete(old.id)
    r = repo.gc()
    assert r["deferred"] and r["packs_deleted"] == 0 and r["packs_pending"] == 2
    info = w.commit()
    assert info.chunks_reused == 2
    r = repo.gc()  # the lease is gone: the sweep re-marks and finds the packs live again
    assert r["packs_deleted"] == 0 and not r["deferred"]
    assert restore(repo, info.id) == old_data
    # a crashed writer's packs (no index, lease expired or released) are swept
    w2 = repo.start_backup("crash", "crash", 4 * MiB, "s", 1, {}, None)
    w2.write(0, bytes(random_volume(4 * MiB)))
    w2._flush_cell()
    w2._drain(block=True)
    w2._seal_pack()
    w2._check_uploads(block=True)
    w2.lease.release()  # as if it expired
    orphan = set(w2._written)
    assert orphan <= packs(t)
    r = repo.gc()
    assert r["packs_deleted"] == 1 and not orphan & packs(t)
    assert verify(repo, read_data=True).ok


def test_a_writer_started_after_gc_marked_does_not_reuse_pending_packs() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)
    data = random_volume(4 * MiB)
    old = backup_full(repo, data, "old")
    holder = repo.lease("restore", 60)  # some other lease keeps the sweep deferred
    repo.delete(old.id)
    r = repo.gc()
    assert r["deferred"] and r["packs_pending"] == 1
    info = backup_full(repo, data, "new")
    assert info.chunks_new == 1 and info.chunks_reused == 0  # written again, not reused
    holder.release()
    r = repo.gc()
    assert r["packs_deleted"] == 1
    assert restore(repo, info.id) == data and verify(repo, read_data=True).ok


def test_two_gcs_at_once_refuse() -> None:
    repo = new_repo()
    with repo.lease("gc", 60), pytest.raises(Busy):
        gc.collect(repo)


def test_a_gc_that_died_before_writing_its_lease_set_makes_the_next_wait() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)
    data = random_volume(4 * MiB)
    old = backup_full(repo, data, "old")
    repo.delete(old.id)
    w = repo.start_backup("new", "new", len(data), "s", 1, {}, None)  # started before pending
    gc._write_pending(repo, packs(t), set(), complete=False)  # the GC died here
    r = repo.gc()
    assert r["deferred"] and r["packs_deleted"] == 0
    w.write(0, bytes(data))
    w.commit()


def test_repair_rebuilds_a_lost_or_damaged_catalog() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    data = volume(4 * MiB)
    a = backup_full(repo, data)
    saved = t.objects["catalog"]
    b = backup_full(repo, volume(4 * MiB, seed=5))
    t.objects["catalog"] = saved  # a lost update: b's manifest exists, the catalog misses it
    rep = verify(repo)
    assert rep.ok and any(b.id in w for w in rep.warnings)
    assert repo.repair() == {"added": 1, "dropped": 0, "chunks_indexed": 0}
    assert [x.id for x in repo.backups()] == [a.id, b.id]
    t.objects["catalog"] = b"garbage"
    assert repo.repair() == {"added": 2, "dropped": 0, "chunks_indexed": 0}
    assert [x.id for x in repo.backups()] == [a.id, b.id] and restore(repo, a.id) == data


def test_repair_indexes_packs_again_from_their_trailers() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)
    data = random_volume(8 * MiB)
    a = backup_full(repo, data)
    (index,) = [k for k in t.objects if k.startswith("index/")]
    del t.objects[index]  # the index is lost; the packs describe themselves
    fresh = Repository.open(t, KEY)
    rep = verify(fresh)
    assert not rep.ok and len(rep.missing_chunks) == 2
    with pytest.raises(NotFound, match="in no index"):
        restore(fresh, a.id)
    assert fresh.repair() == {"added": 0, "dropped": 0, "chunks_indexed": 2}
    assert restore(fresh, a.id) == data and verify(fresh, read_data=True).ok
    assert backup_full(fresh, data, "again").chunks_reused == 2  # dedup works again


op = st.one_of(
    st.tuples(st.just("backup"), st.integers(0, 2), st.booleans()),  # volume, incremental
    st.tuples(st.just("delete"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("gc"), st.integers(0, 0), st.booleans()),  # with a writer open across it
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=10), st.randoms(use_true_random=False))
def test_gc_never_takes_what_a_backup_needs(
    ops: list[tuple[str, int, bool]], rnd: random.Random
) -> None:
    """Random backups (three volumes that share cells), deletes and GCs, some GCs with a
    writer open across them: every backup left restores exactly and verifies."""
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=2 * MiB)
    cells = [bytes([i + 1]) * 4096 + os.urandom(4 * MiB - 4096) for i in range(4)]
    vols = [bytearray(b"".join(rnd.choice(cells) for _ in range(3))) for _ in range(3)]
    last: dict[int, str] = {}
    alive: dict[str, bytes] = {}

    def backup(v: int, incremental: bool) -> None:
        data = vols[v]
        parent = last.get(v) if incremental and last.get(v) in alive else None
        if parent is None:
            info = backup_full(repo, data, f"v{v}")
        else:
            w = repo.start_backup(f"v{v}", f"v{v}", len(data), "s", 1, {}, parent)
            off = rnd.randrange(0, len(data) // 4096) * 4096
            data[off : off + 4096] = rnd.choice(cells)[:4096]
            w.write(off, bytes(data[off : off + 4096]))
            info = w.commit()
        last[v] = info.id
        alive[info.id] = bytes(data)

    for kind, n, flag in ops:
        if kind == "backup":
            backup(n, flag)
        elif kind == "delete" and alive:
            victim = sorted(alive)[n % len(alive)]
            repo.delete(victim)
            del alive[victim]
        elif kind == "gc":
            if flag:  # a writer that reuses chunks of everything, open across the GC
                v = rnd.randrange(3)
                w = repo.start_backup("open", "open", len(vols[v]), "s", 1, {}, None)
                w.write(0, bytes(vols[v]))
                if alive:
                    victim = sorted(alive)[0]
                    repo.delete(victim)
                    del alive[victim]
                repo.gc()
                info = w.commit()
                alive[info.id] = bytes(vols[v])
            repo.gc()
    for bid, data in alive.items():
        assert restore(repo, bid) == data
    rep = verify(repo, read_data=True)
    assert rep.ok, rep.errors


def test_an_unreadable_lease_holds_gc_back_and_verify_names_it() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=MiB)
    old = backup_full(repo, random_volume(4 * MiB))
    repo.delete(old.id)
    t.objects["locks/backup-damaged"] = b"CHBKL\x01\x00\x00" + bytes(40)
    r = repo.gc()
    assert r["deferred"] and r["packs_deleted"] == 0
    rep = verify(repo)
    assert "locks/backup-damaged" in rep.bad_objects
    del t.objects["locks/backup-damaged"]
    assert repo.gc()["packs_deleted"] == 1
