"""The checked-in sample repository (tests/data/backup-repo/, made by make_sample.py) opens
with its key, verifies, and restores both backups to the known bytes.

If this fails after a format change, the change broke repositories users already have: bump
the format version and keep reading version 1 (format.READ_VERSIONS) instead.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from cargohold.backup import format as fmt
from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.backup.verify import verify
from tests.unit.backup.make_sample import KEY_FILE, SAMPLE, SIZE, volumes
from tests.unit.backup.support import restore

FULL_SHA256 = "54cbcb4b80e24af5931d7708a03583f23a3ed1023d6356377597b04d04abc7bb"
INCREMENTAL_SHA256 = "744feb23445285e57fbd3033e1e1cec686e18675646c7ea9fb770182c1619794"
KINDS = {"backups": b"M", "catalog": b"C", "index": b"I", "keys": b"K", "packs": b"P"}


def test_every_object_starts_with_magic_kind_and_version() -> None:
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    assert len(files) == 8
    for p in files:
        head = p.read_bytes()[: fmt.HEADER_SIZE]
        assert head == b"CHBK" + KINDS[p.relative_to(SAMPLE).parts[0]] + b"\x01\x00\x00", p


def test_the_sample_restores_to_the_known_bytes(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(SAMPLE, copy)  # a restore takes a lease: never write into tests/data
    repo = Repository.open(FileTarget(copy), KEY_FILE.read_bytes())
    full, incremental = repo.backups()
    assert (full.mode, incremental.mode, incremental.parent) == ("full", "incremental", full.id)
    assert full.size == incremental.size == SIZE and full.labels == {"app": "sample"}
    assert (full.snapshot, full.generation, incremental.generation) == ("snap-1", 7, 9)
    assert full.bytes_total == 10 << 20 and incremental.bytes_total == (9 << 20) - 8192
    a = restore(repo, full.id)
    b = restore(repo, incremental.id)
    assert hashlib.sha256(a).hexdigest() == FULL_SHA256
    assert hashlib.sha256(b).hexdigest() == INCREMENTAL_SHA256
    assert (bytes(a), bytes(b)) == volumes()  # the generator agrees with the checked-in bytes
    report = verify(repo, read_data=True)
    assert report.ok and report.backups == 2 and report.blobs_read == report.chunks
