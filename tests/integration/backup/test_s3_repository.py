"""The backup repository (backup/repository.py) on a real S3 server through S3Target.

A full backup and its restore, an incremental one and its restore (the whole volume back),
the requests each costs (no LIST on the backup, restore or listing path), a wrong key.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from cargohold import errors
from cargohold.backup.repository import Repository
from cargohold.backup.s3_target import S3Target
from tests.support.s3_server import S3Server

MiB = 1 << 20
KEY = hashlib.sha256(b"test repository key").digest()


def _target(s3: S3Server, prefix: str) -> S3Target:
    return S3Target(s3.bucket, prefix, s3.endpoint, s3.access_key, s3.secret_key)


def _volume(size: int) -> bytearray:
    """Half random, a quarter zeros, a quarter compressible, in 1 MiB stripes."""
    out = bytearray(size)
    for off in range(0, size, 4 * MiB):
        out[off : off + 2 * MiB] = os.urandom(2 * MiB)
        # off + 2 MiB .. + 3 MiB stays zero
        row = b"row %08d: status=ok; " % off
        out[off + 3 * MiB : off + 4 * MiB] = (row * (MiB // len(row) + 1))[:MiB]
    assert len(out) == size
    return out


def _restore(repo: Repository, backup: str, size: int) -> bytearray:
    out = bytearray(size)
    with repo.restore_reader(backup) as r:
        for off, data in r.read_all():
            out[off : off + len(data)] = data
    return out


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def test_full_and_incremental_round_trip_through_s3(s3_server: S3Server, s3_prefix: str) -> None:
    size = 64 * MiB
    data = _volume(size)
    target = _target(s3_server, s3_prefix)
    repo = Repository.init(target, KEY)

    before = dict(target.stats)
    w = repo.start_backup("vol", "vol-uid", size, "snap-1", 1, {"app": "db"}, None)
    for off in range(0, size, 4 * MiB):
        w.write(off, memoryview(data)[off : off + 4 * MiB])
    full = w.commit()
    cost = _delta(before, target.stats)
    assert cost["list"] == 0, cost
    assert full.mode == "full" and full.bytes_total <= size
    assert full.bytes_new <= size * 3 // 4 + size // 100  # the zero quarter costs nothing

    before = dict(target.stats)
    assert _restore(repo, full.id, size) == data
    assert _delta(before, target.stats)["list"] == 0

    # 1% of the 4 KiB blocks change: only they are written, nothing is re-uploaded but them
    blocks = sorted(int.from_bytes(os.urandom(4), "little") % (size // 4096) for _ in range(164))
    new = bytearray(data)
    before = dict(target.stats)
    w = repo.start_backup("vol", "vol-uid", size, "snap-2", 2, {"app": "db"}, full.id)
    for b in dict.fromkeys(blocks):
        block = os.urandom(4096)
        new[b * 4096 : (b + 1) * 4096] = block
        w.write(b * 4096, block)
    incr = w.commit()
    cost = _delta(before, target.stats)
    assert cost["list"] == 0, cost
    assert incr.mode == "incremental" and incr.parent == full.id
    assert incr.bytes_new < size // 4, incr  # what changed, not the volume again
    assert _restore(repo, incr.id, size) == new  # the whole volume, not only the change
    assert _restore(repo, full.id, size) == data  # the parent is untouched

    # listing backups: one GET of the catalog, through a repository opened afresh
    again = Repository.open(_target(s3_server, s3_prefix), KEY)
    before = dict(again.target.stats)
    assert [b.id for b in again.backups()] == [full.id, incr.id]
    assert _delta(before, again.target.stats) == {
        "put": 0,
        "get": 1,
        "list": 0,
        "delete": 0,
        "head": 0,
    }


def test_wrong_key_is_permission_denied(s3_server: S3Server, s3_prefix: str) -> None:
    Repository.init(_target(s3_server, s3_prefix), KEY)
    with pytest.raises(errors.PermissionDenied):
        Repository.open(_target(s3_server, s3_prefix), bytes(32))


def test_repository_on_a_missing_bucket_names_it(s3_server: S3Server) -> None:
    t = S3Target(
        "no-such-bucket-r", "p", s3_server.endpoint, s3_server.access_key, s3_server.secret_key
    )
    with pytest.raises(errors.NotFound) as info:
        Repository.open(t, KEY)
    assert "no-such-bucket-r" in str(info.value)
