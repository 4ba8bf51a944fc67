"""Round trips through a repository: full, incremental, zeros, dedup, listing, delete, keys."""

from __future__ import annotations

import os

import pytest

from cargohold.backup.format import CELL
from cargohold.backup.repository import Repository
from cargohold.backup.targets import MemoryTarget
from cargohold.backup.verify import verify
from cargohold.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TargetError,
    WrongState,
)
from tests.unit.backup.support import (
    KEY,
    MiB,
    backup_full,
    new_repo,
    random_volume,
    restore,
    volume,
)


def test_full_backup_round_trip_and_listing_is_one_get() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    data = volume(12 * MiB, zero_from=10 * MiB)
    info = backup_full(repo, data)
    assert info.mode == "full" and info.parent is None and info.labels == {"app": "db"}
    assert info.bytes_read == 12 * MiB and info.bytes_total == 10 * MiB
    assert info.chunks_new == 3 and info.chunks_reused == 0
    assert restore(repo, info.id) == data
    again = Repository.open(t, KEY)
    t.stats.update(dict.fromkeys(t.stats, 0))
    assert [b.id for b in again.backups()] == [info.id]
    assert t.stats == {"put": 0, "get": 1, "list": 0, "delete": 0, "head": 0}
    assert again.backup(info.id) == info


def test_no_list_on_backup_restore_or_listing() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    a = backup_full(repo, volume(8 * MiB))
    data = volume(8 * MiB, seed=2)
    b = backup_full(repo, data, parent=a.id)
    assert restore(repo, b.id) == data
    repo.backups()
    assert t.stats["list"] == 0


def test_zero_blocks_cost_nothing() -> None:
    repo = new_repo()
    data = bytearray(16 * MiB)
    data[5 * MiB : 5 * MiB + 4096] = b"\x01" * 4096
    info = backup_full(repo, data)
    assert info.bytes_total == 4096 and info.chunks_new == 1
    assert info.bytes_new < 200  # one compressed 4 KiB block
    r = repo.restore_reader(info.id)
    assert r.extents() == [(5 * MiB, 4096)]
    r.close()
    assert restore(repo, info.id) == data


def test_incremental_restores_the_full_volume() -> None:
    repo = new_repo()
    v1 = volume(12 * MiB)
    a = backup_full(repo, v1)
    v2 = bytearray(v1)
    v2[4096:8192] = os.urandom(4096)
    v2[CELL + 40960 : CELL + 40960 + 3 * 4096] = os.urandom(3 * 4096)
    v2[9 * MiB : 10 * MiB] = bytes(MiB)  # became zeros
    w = repo.start_backup("vol", "vol-id", len(v2), "snap2", 2, {}, a.id)
    w.write(4096, bytes(v2[4096:8192]))
    w.write(CELL + 40960, bytes(v2[CELL + 40960 : CELL + 40960 + 3 * 4096]))
    w.zero(9 * MiB, MiB)
    b = w.commit()
    assert b.mode == "incremental" and b.parent == a.id
    assert b.bytes_read == 4 * 4096 and b.chunks_new == 2
    assert b.bytes_total == 11 * MiB
    assert restore(repo, b.id) == v2
    assert restore(repo, a.id) == v1  # the parent is untouched


def test_written_zeros_in_an_incremental_clear_the_parent() -> None:
    repo = new_repo()
    v1 = volume(8 * MiB)
    a = backup_full(repo, v1)
    w = repo.start_backup("vol", "vol-id", len(v1), "s", 2, {}, a.id)
    w.write(MiB, bytes(8192))
    b = w.commit()
    v2 = bytearray(v1)
    v2[MiB : MiB + 8192] = bytes(8192)
    assert restore(repo, b.id) == v2 and b.chunks_new == 0


def test_dedup_across_volumes_and_backups() -> None:
    t = MemoryTarget()
    repo = new_repo(t)
    data = random_volume(16 * MiB)
    a = backup_full(repo, data, "one")
    stored = sum(len(v) for k, v in t.objects.items() if k.startswith("packs/"))
    b = backup_full(repo, data, "two")
    assert b.chunks_new == 0 and b.chunks_reused == 4 and b.bytes_new == 0
    assert sum(len(v) for k, v in t.objects.items() if k.startswith("packs/")) == stored
    assert restore(repo, b.id) == data and restore(repo, a.id) == data


def test_unaligned_writes_and_small_steps() -> None:
    repo = new_repo()
    data = volume(9 * MiB)  # the last cell is a partial one
    info = backup_full(repo, data, step=3 * 4096)
    assert restore(repo, info.id, max_bytes=64 * 1024) == data
    w = repo.start_backup("v", "v", 8 * MiB, "s", 1, {}, None)
    for bad in ((1, b"x" * 4096), (0, b"x" * 100), (8 * MiB, b"x" * 4096)):
        with pytest.raises(InvalidArgument):
            w.write(*bad)
    w.abort()


def test_out_of_order_writes_override_in_the_order_given() -> None:
    repo = new_repo()
    size = 12 * MiB
    model = bytearray(size)
    w = repo.start_backup("v", "v", size, "s", 1, {}, None)
    for off, n, byte in (
        (8 * MiB, 8192, 1),
        (0, 4096, 2),
        (8 * MiB + 4096, 4096, 3),
        (100 * 4096, 4096, 4),
    ):
        w.write(off, bytes([byte]) * n)
        model[off : off + n] = bytes([byte]) * n
    w.zero(8 * MiB, 4096)
    model[8 * MiB : 8 * MiB + 4096] = bytes(4096)
    info = w.commit()
    assert restore(repo, info.id) == model


def test_abort_and_a_dropped_writer_leave_nothing_listed() -> None:
    t = MemoryTarget()
    repo = new_repo(t, pack_bytes=1 * MiB)
    w = repo.start_backup("v", "v", 8 * MiB, "s", 1, {}, None)
    w.write(0, bytes(random_volume(8 * MiB)))
    w.abort()
    assert repo.backups() == []
    assert not [k for k in t.objects if k.startswith(("packs/", "index/", "backups/", "locks/"))]
    with pytest.raises(WrongState):
        w.write(0, b"x" * 4096)
    w2 = repo.start_backup("v", "v", 8 * MiB, "s", 1, {}, None)
    w2.write(0, bytes(random_volume(8 * MiB)))
    del w2  # a crash: the writer never commits
    assert repo.backups() == []
    assert not [k for k in t.objects if k.startswith("backups/")]


def test_delete_forgets_the_backup() -> None:
    repo = new_repo()
    a = backup_full(repo, volume(4 * MiB))
    b = backup_full(repo, volume(4 * MiB, seed=3))
    repo.delete(a.id)
    assert [x.id for x in repo.backups()] == [b.id]
    with pytest.raises(NotFound):
        repo.backup(a.id)
    with pytest.raises(NotFound):
        repo.restore_reader(a.id)
    with pytest.raises(InvalidArgument):
        repo.delete("../etc")


def test_wrong_key_and_no_repository_and_init_twice() -> None:
    t = MemoryTarget()
    new_repo(t)
    with pytest.raises(PermissionDenied, match="wrong key"):
        Repository.open(t, bytes(32))
    with pytest.raises(InvalidArgument):
        Repository.open(t, b"short")
    with pytest.raises(AlreadyExists):
        Repository.init(t, KEY)
    with pytest.raises(NotFound, match="no backup repository"):
        Repository.open(MemoryTarget(), KEY)


def test_a_missing_bucket_is_not_reported_as_a_missing_repository() -> None:
    """A target whose bucket is gone says so (found through a cluster: the engine's error
    said "holds no backup repository" for a deleted bucket)."""

    class NoBucket(MemoryTarget):
        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            raise NotFound("S3 bucket 'gone' does not exist at http://x (create it first)",
                           bucket="gone")  # fmt: skip

    with pytest.raises(NotFound, match="bucket 'gone' does not exist"):
        Repository.open(NoBucket(), KEY)


def test_a_dropped_writer_stops_renewing_its_lease() -> None:
    import gc as pygc

    from tests.support.polling import wait_until

    t = MemoryTarget()
    repo = new_repo(t, lease_ttl=0.3)
    w = repo.start_backup("v", "v", 4 * MiB, "s", 1, {}, None)
    lease = w.lease
    w.write(0, b"\x01" * 4096)
    first = lease.expires
    wait_until(lambda: lease.expires > first, 5, "a renewal while the writer lives")
    del w
    pygc.collect()
    wait_until(
        lambda: lease._thread is not None and not lease._thread.is_alive(), 5, "renewal to stop"
    )
    wait_until(lambda: not lease.valid(), 5, "the lease to expire")


def test_an_incremental_of_a_grown_or_shrunk_volume() -> None:
    repo = new_repo()
    v1 = volume(8 * MiB)
    a = backup_full(repo, v1)
    w = repo.start_backup("vol", "vol-id", 10 * MiB, "s", 2, {}, a.id)  # expanded
    w.write(9 * MiB, b"\x07" * 4096)
    grown = w.commit()
    want = bytearray(v1) + bytearray(2 * MiB)
    want[9 * MiB : 9 * MiB + 4096] = b"\x07" * 4096
    assert restore(repo, grown.id) == want
    w = repo.start_backup("vol", "vol-id", 3 * MiB, "s", 3, {}, grown.id)  # cut (a new volume)
    small = w.commit()
    assert restore(repo, small.id) == v1[: 3 * MiB] and small.bytes_total == 3 * MiB


def test_fragmented_cells_can_be_written_again_whole() -> None:
    repo = new_repo()
    v1 = volume(8 * MiB)
    a = backup_full(repo, v1)
    v2 = bytearray(v1)
    w = repo.start_backup("vol", "vol-id", len(v2), "s", 2, {}, a.id)
    for i in range(0, 1024, 32):  # every 32nd block of the first cell changes
        v2[i * 4096 : i * 4096 + 4096] = bytes([i % 250 + 1]) * 4096
        w.write(i * 4096, bytes(v2[i * 4096 : i * 4096 + 4096]))
    w.write(4 * MiB, bytes(v2[4 * MiB : 4 * MiB + 4096]))
    assert w.fragmented_cells() == [(0, 4 * MiB)]
    w.write(0, bytes(v2[: 4 * MiB]))  # the caller re-reads the cell whole
    assert w.fragmented_cells() == []
    b = w.commit()
    assert restore(repo, b.id) == v2
    assert len(repo.restore_reader(b.id).map.cells[0]) == 1


class FailingTarget(MemoryTarget):
    """Fails every put of a key with ``prefix`` after ``after`` successful ones."""

    def __init__(self, prefix: str, after: int) -> None:
        super().__init__()
        self.prefix, self.after = prefix, after

    def put(self, key: str, data: bytes | memoryview) -> None:
        if key.startswith(self.prefix):
            if self.after <= 0:
                raise TargetError(f"{self.describe()}: {key}: connection reset", key=key)
            self.after -= 1
        super().put(key, data)


@pytest.mark.parametrize(
    ("prefix", "after"), [("packs/", 1), ("index/", 0), ("backups/", 0), ("catalog", 0)]
)
def test_a_target_failing_at_any_step_records_nothing(prefix: str, after: int) -> None:
    t = FailingTarget("none", 0)
    repo = new_repo(t, pack_bytes=MiB)
    first = backup_full(repo, volume(4 * MiB))
    t.prefix, t.after = prefix, after
    with pytest.raises(TargetError, match="connection reset"):
        backup_full(repo, random_volume(12 * MiB), "failing")
    t.prefix = "none"
    assert [b.id for b in repo.backups()] == [first.id]
    left = {k for k in t.objects if k.startswith(("backups/", "locks/"))}
    assert left == {f"backups/{first.id}"}  # no manifest of the failed one, no lease
    assert len([k for k in t.objects if k.startswith("index/")]) == 1  # its index was removed
    assert verify(repo, read_data=True).ok


def test_concurrent_backups_in_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    repo = new_repo(pack_bytes=2 * MiB)
    vols = [random_volume(8 * MiB) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(lambda i: backup_full(repo, vols[i], f"v{i}"), range(4)))
    assert sorted(b.id for b in repo.backups()) == sorted(i.id for i in infos)
    for info, data in zip(infos, vols, strict=True):
        assert restore(repo, info.id) == data


def test_a_reused_caller_buffer_does_not_change_what_was_backed_up() -> None:
    repo = new_repo()
    data = random_volume(12 * MiB)
    buf = bytearray(5 * MiB)
    w = repo.start_backup("v", "v", len(data), "s", 1, {}, None)
    for off in (0, 5 * MiB):
        buf[:] = data[off : off + 5 * MiB]
        w.write(off, memoryview(buf))
    buf[: 2 * MiB] = data[10 * MiB :]
    w.write(10 * MiB, memoryview(buf)[: 2 * MiB])
    buf[:] = bytes(len(buf))  # the caller scribbles over its buffer before commit
    info = w.commit()
    assert restore(repo, info.id) == data
