"""Helpers of the backup unit tests: a repository on a MemoryTarget, volumes, restores."""

from __future__ import annotations

import hashlib
import os

from cargohold.backup.catalog import BackupInfo
from cargohold.backup.repository import Repository
from cargohold.backup.targets import MemoryTarget, Target

MiB = 1 << 20
KEY = bytes(range(32))


def new_repo(target: Target | None = None, **kw: object) -> Repository:
    return Repository.init(target if target is not None else MemoryTarget(), KEY, **kw)  # type: ignore[arg-type]


def volume(size: int, seed: int = 1, zero_from: int | None = None) -> bytearray:
    """Deterministic random bytes (a hash chain), with an optional all-zero tail."""
    out = bytearray()
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest()
    while len(out) < size:
        block = hashlib.sha512(block).digest()
        out += block * 64  # 4 KiB of one pattern: not compressible across blocks much
    del out[size:]
    if zero_from is not None:
        out[zero_from:] = bytes(size - zero_from)
    return out


def random_volume(size: int) -> bytearray:
    return bytearray(os.urandom(size))


def backup_full(
    repo: Repository,
    data: bytes | bytearray,
    name: str = "vol",
    parent: str | None = None,
    step: int = 4 * MiB,
) -> BackupInfo:
    w = repo.start_backup(name, name + "-id", len(data), "snap", 1, {"app": "db"}, parent)
    for off in range(0, len(data), step):
        w.write(off, bytes(data[off : off + step]))
    return w.commit()


def restore(repo: Repository, backup: str, max_bytes: int = 4 * MiB) -> bytearray:
    r = repo.restore_reader(backup)
    out = bytearray(r.info.size)
    last = -1
    for off, data in r.read_all(max_bytes):
        assert off > last and len(data) <= max_bytes
        out[off : off + len(data)] = data
        last = off
    return out
