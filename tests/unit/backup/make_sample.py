"""Regenerates tests/data/backup-repo/, the checked-in sample repository (a file target).

    .venv/bin/python -m tests.unit.backup.make_sample

Two backups of a 12 MiB volume: a full one, then an incremental one that changes a few
blocks, zeroes 1 MiB and writes zeros as data. The key (32 bytes) is tests/data/backup-repo.key.
Nonces and object names are random, so the objects differ at every regeneration; the restored
bytes do not (their sha256 are in test_sample.py and docs/formats/backup-repository.md).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "tests" / "data" / "backup-repo"
KEY_FILE = ROOT / "tests" / "data" / "backup-repo.key"
MiB = 1 << 20
SIZE = 12 * MiB


def volumes() -> tuple[bytes, bytes]:
    """The volume at the full backup and at the incremental one (deterministic)."""
    v = bytearray()
    seed = b"cargohold sample"
    while len(v) < SIZE:
        seed = hashlib.sha256(seed).digest()
        v += seed * 128  # 4 KiB blocks of a repeated 32-byte pattern: compressible
    v[6 * MiB : 8 * MiB] = bytes(2 * MiB)  # a hole
    first = bytes(v)
    v[4096:8192] = b"\x5a" * 4096  # changed block
    v[9 * MiB : 10 * MiB] = bytes(MiB)  # zeroed (zero())
    v[11 * MiB : 11 * MiB + 8192] = bytes(8192)  # zeros written as data
    return first, bytes(v)


def main() -> None:
    first, second = volumes()
    if SAMPLE.exists():
        shutil.rmtree(SAMPLE)
    key = hashlib.sha256(b"cargohold backup sample key").digest()
    KEY_FILE.write_bytes(key)
    repo = Repository.init(FileTarget(SAMPLE), key, pack_bytes=4 * MiB)
    w = repo.start_backup("sample", "uid-sample", SIZE, "snap-1", 7, {"app": "sample"}, None)
    for off in range(0, SIZE, 4 * MiB):
        w.write(off, first[off : off + 4 * MiB])
    a = w.commit()
    w = repo.start_backup("sample", "uid-sample", SIZE, "snap-2", 9, {"app": "sample"}, a.id)
    w.write(4096, second[4096:8192])
    w.zero(9 * MiB, MiB)
    w.write(11 * MiB, second[11 * MiB : 11 * MiB + 8192])
    b = w.commit()
    print(f"{a.id} full        sha256 {hashlib.sha256(first).hexdigest()}")
    print(f"{b.id} incremental sha256 {hashlib.sha256(second).hexdigest()}")


if __name__ == "__main__":
    main()
