"""SCRUB over a block range (what the engine's scrubber asks for, window by window): only
blocks of every layer inside the range are verified and reported; length 0 runs to the
end. Both the file store and its in-memory twin."""

from __future__ import annotations

import os

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import InvalidArgument
from cargohold.store import format as fmt
from cargohold.store.file_store import FileStore
from cargohold.store.memory_store import MemoryStore


def _flip(path, block: int) -> None:
    with open(path, "r+b") as f:
        f.seek(fmt.HEADER_SIZE + block * BLOCK_SIZE + 7)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))


def test_file_store_scrubs_only_the_range_asked_for(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 4 * MIB)
    s.write(0, os.urandom(64 * BLOCK_SIZE))
    s.snapshot_create("snap")
    s.write(10 * BLOCK_SIZE, os.urandom(BLOCK_SIZE))
    s.close()
    _flip(tmp_path / "r" / "layer-000001.data", 3)  # the snapshot's layer
    _flip(tmp_path / "r" / "layer-000002.data", 10)  # the head
    _flip(tmp_path / "r" / "layer-000001.data", 40)
    s = FileStore.open(str(tmp_path / "r"))
    try:
        whole = s.scrub()
        assert sorted((b.layer, b.block) for b in whole.bad) == [
            ("head", 10),
            ("snap", 3),
            ("snap", 40),
        ]
        assert whole.checked_blocks == 65
        part = s.scrub(0, 16 * BLOCK_SIZE)  # blocks 0-15 of each layer
        assert sorted((b.layer, b.block) for b in part.bad) == [("head", 10), ("snap", 3)]
        assert part.checked_blocks == 17
        tail = s.scrub(16 * BLOCK_SIZE)  # length 0: to the end
        assert [(b.layer, b.block) for b in tail.bad] == [("snap", 40)]
        assert s.scrub(3 * BLOCK_SIZE, BLOCK_SIZE).checked_blocks == 1
        with pytest.raises(InvalidArgument):
            s.scrub(100, BLOCK_SIZE)
        with pytest.raises(InvalidArgument):
            s.scrub(0, 8 * MIB)
    finally:
        s.close()


def test_memory_twin_scrubs_a_range_like_the_file_store():
    s = MemoryStore(64 * BLOCK_SIZE)
    s.write(0, os.urandom(8 * BLOCK_SIZE))
    s.corrupt(2)
    s.corrupt(6)
    assert [(b.layer, b.block) for b in s.scrub().bad] == [("head", 2), ("head", 6)]
    part = s.scrub(4 * BLOCK_SIZE, 4 * BLOCK_SIZE)
    assert [(b.layer, b.block) for b in part.bad] == [("head", 6)]
    assert part.checked_blocks == 4
