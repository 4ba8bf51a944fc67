"""GC (mark and sweep with leases) and verify (structure, tags, chunk ids), with tampering."""

from __future__ import annotations

import pytest

from cargohold.backup import gc
from cargohold.backup.targets import MemoryTarget
from cargohold.backup.verify import verify
from cargohold.errors import Busy, ChecksumError, NotFound
from tests.unit.backup.support import MiB, backup_full, new_repo, random_volume, restore, volume


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
