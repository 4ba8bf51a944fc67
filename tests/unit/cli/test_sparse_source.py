"""cli/sparse_source.py: the data of a sparse file found by SEEK_DATA/SEEK_HOLE, zero chunks
inside the data skipped, a device-like source without hole information read whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cargohold.cli import sparse_source
from cargohold.cli.sparse_source import CHUNK, data_extents, pieces, source_size
from cargohold.errors import ConfigError

MiB = 1 << 20


def test_extents_and_pieces_of_a_sparse_file(tmp_path: Path) -> None:
    img = tmp_path / "img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(4096)
        f.write(b"a" * 8192)
        f.seek(10 * MiB)
        f.write(b"\0" * CHUNK + b"b" * 4096)  # written zeros: data, but skipped
    fd = os.open(img, os.O_RDONLY)
    try:
        assert source_size(fd) == 64 * MiB
        ext = list(data_extents(fd, 64 * MiB))
        assert ext[0] == (4096, 8192)
        got = list(pieces(fd, 64 * MiB))
        assert [(o, len(d)) for o, d in got] == [(4096, 8192), (10 * MiB + CHUNK, 4096)]
        assert got[1][1] == b"b" * 4096
    finally:
        os.close(fd)


def test_no_hole_information_reads_everything(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "img"
    img.write_bytes(b"\0" * CHUNK + b"x" * 100)
    real = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        if how == os.SEEK_DATA:
            raise OSError(22, "Invalid argument")  # a device that cannot say
        return real(fd, pos, how)

    monkeypatch.setattr(sparse_source.os, "lseek", lseek)
    fd = os.open(img, os.O_RDONLY)
    try:
        assert list(data_extents(fd, CHUNK + 100)) == [(0, CHUNK + 100)]
        [(off, data)] = list(pieces(fd, CHUNK + 100))  # the tail padded to a whole block
        assert off == CHUNK and data == b"x" * 100 + bytes(4096 - 100)
    finally:
        os.close(fd)


def test_not_a_file_or_device(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(ConfigError, match="regular file"):
            source_size(fd)
    finally:
        os.close(fd)
