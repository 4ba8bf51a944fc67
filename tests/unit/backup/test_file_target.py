"""A repository on a real directory (FileTarget), and on a small loop-mounted ext4 that fills
up: ENOSPC is a clear NoSpace, nothing half-written is listed, earlier backups stay whole."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget
from cargohold.backup.verify import verify
from cargohold.errors import NoSpace
from tests.unit.backup.support import (
    KEY,
    MiB,
    backup_full,
    new_repo,
    random_volume,
    restore,
    volume,
)


def test_round_trip_on_a_directory(tmp_path: Path) -> None:
    t = FileTarget(tmp_path / "repo")
    repo = new_repo(t, pack_bytes=8 * MiB)
    data = random_volume(20 * MiB)
    data[18 * MiB :] = bytes(2 * MiB)
    a = backup_full(repo, data)
    again = Repository.open(FileTarget(tmp_path / "repo"), KEY)
    assert restore(again, a.id) == data
    names = sorted(
        p.relative_to(tmp_path / "repo").as_posix()
        for p in (tmp_path / "repo").rglob("*")
        if p.is_file()
    )
    assert "catalog" in names and "keys/master" in names and f"backups/{a.id}" in names
    assert not [n for n in names if n.startswith("locks/") or "/." in n or n.startswith(".")]
    assert len([n for n in names if n.startswith("packs/")]) == 3  # 8 MiB packs of 4 MiB chunks
    assert verify(again, read_data=True).ok


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    from tests.probe.engine_support import loop_ext4, loop_ext4_unavailable

    why = loop_ext4_unavailable()
    if why:
        pytest.skip(why)
    try:
        cm = loop_ext4(tmp_path, 24 * MiB)
        mnt = cm.__enter__()
    except RuntimeError as e:  # no loop device free
        pytest.skip(str(e))
    try:
        yield mnt
    finally:
        cm.__exit__(None, None, None)


@pytest.mark.root
def test_a_full_filesystem_fails_the_backup_cleanly(small_fs: Path) -> None:
    t = FileTarget(small_fs / "repo")
    repo = new_repo(t, pack_bytes=2 * MiB)
    first_data = volume(4 * MiB)
    first = backup_full(repo, first_data, "first")
    with pytest.raises(NoSpace, match="no space left") as e:
        backup_full(repo, random_volume(48 * MiB), "big")
    assert str(small_fs / "repo") in str(e.value)
    assert [b.id for b in repo.backups()] == [first.id]  # nothing half-written is listed
    leftovers = [
        p for p in (small_fs / "repo").rglob("*") if p.is_file() and p.name.startswith(".")
    ]
    assert leftovers == []  # no temporary files
    assert not list((small_fs / "repo").glob("locks/*"))
    assert restore(repo, first.id) == first_data
    assert verify(repo, read_data=True).ok
    # with the space back (GC frees the failed backup's nothing; a filler file goes), it works
    filler = small_fs / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(os.urandom(MiB))
    with pytest.raises(NoSpace):
        backup_full(repo, random_volume(4 * MiB), "small")  # even the first pack fails
    assert [b.id for b in repo.backups()] == [first.id]
    filler.unlink()
    second = backup_full(repo, random_volume(4 * MiB), "small")
    assert [b.id for b in repo.backups()] == [first.id, second.id]
