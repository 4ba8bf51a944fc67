"""Torn blocks after a machine crash (docs/formats/replica-store.md, "Machine crashes"):
a block whose map record page and data page come from different moments fails its
checksum. The open after a machine crash verifies every data block of the head and adopts
what the data page holds; a hole above a parent layer is counted lost. A killed process
and ordinary bit rot are left exactly as before. Also: the cost of that verify. (The
replica server's start: tests/unit/replica/test_startup_recovery.py.)"""

from __future__ import annotations

import os
import pathlib
import time
import uuid

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import ChecksumError
from cargohold.store import format as fmt
from cargohold.store import reader
from cargohold.store.file_store import FileStore
from cargohold.store.layer import punch_hole

BOOTS = [str(uuid.UUID(int=n)) for n in (0xA, 0xB)]
LBA = 5


@pytest.fixture
def boot(monkeypatch) -> list[str]:
    current = [BOOTS[0]]
    monkeypatch.setattr(reader, "boot_id", lambda: current[0])
    return current


def block(tag: int) -> bytes:
    return bytes([tag]) * BLOCK_SIZE


def crash(s: FileStore) -> None:
    """The process stops: no flush, no clean flag; the files keep what the page cache held."""
    for layer in s._layers.values():
        layer.close()
    s._layers = {}


def data_file(d: pathlib.Path, layer: int = 1) -> pathlib.Path:
    return d / f"layer-{layer:06d}.data"


def page(path: pathlib.Path, lba: int, content: bytes | None = None) -> bytes:
    """Block ``lba``'s data page of a data file: read it, or write ``content`` into it."""
    off = fmt.HEADER_SIZE + lba * BLOCK_SIZE
    with open(path, "r+b") as f:
        if content is not None:
            f.seek(off)
            f.write(content)
        f.seek(off)
        return f.read(BLOCK_SIZE)


def hole(path: pathlib.Path, lba: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        punch_hole(fd, fmt.HEADER_SIZE + lba * BLOCK_SIZE, BLOCK_SIZE)
    finally:
        os.close(fd)


def counters(s: FileStore) -> tuple[int, int]:
    st = s.stats()
    return st["adopted_blocks"], st["lost_blocks"]


def test_t1_record_after_the_flush_data_before_adopts_the_flushed_value(tmp_path, boot):
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(LBA * BLOCK_SIZE, block(1), generation=1)
    s.flush()
    s.write(LBA * BLOCK_SIZE, block(2), generation=2)
    crash(s)
    page(data_file(d), LBA, block(1))  # the record went back, the data page did not
    boot[0] = BOOTS[1]
    s = FileStore.open(str(d))
    assert counters(s) == (1, 0) and s.power_loss
    assert s.read(LBA * BLOCK_SIZE, BLOCK_SIZE) == block(1)
    assert not s.scrub().bad
    assert s.changed_since(s.generation) == [(LBA * BLOCK_SIZE, BLOCK_SIZE)]  # copied again
    s.close()


def test_t2_record_of_the_flush_data_after_adopts_the_later_value(tmp_path, boot):
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(LBA * BLOCK_SIZE, block(1), generation=1)
    s.flush()
    flushed_map = (d / "layer-000001.map").read_bytes()
    s.write(LBA * BLOCK_SIZE, block(2), generation=2)
    crash(s)
    (d / "layer-000001.map").write_bytes(flushed_map)  # the data page went back, not the map
    boot[0] = BOOTS[1]
    s = FileStore.open(str(d))
    assert counters(s) == (1, 0) and s.generation == 1
    assert s.read(LBA * BLOCK_SIZE, BLOCK_SIZE) == block(2)  # written after the flush
    assert not s.scrub().bad
    s.close()


def test_a_hole_without_a_parent_was_zeros_at_the_flush(tmp_path, boot):
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(0, block(1), generation=1)
    s.flush()
    s.write(LBA * BLOCK_SIZE, block(2), generation=2)
    crash(s)
    hole(data_file(d), LBA)
    boot[0] = BOOTS[1]
    s = FileStore.open(str(d))
    assert counters(s) == (1, 0)
    assert s.read(LBA * BLOCK_SIZE, BLOCK_SIZE) == bytes(BLOCK_SIZE)
    assert s.read(0, BLOCK_SIZE) == block(1)
    s.close()


def test_a_hole_above_a_parent_is_lost_not_invented(tmp_path, boot):
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(LBA * BLOCK_SIZE, block(1), generation=1)
    s.snapshot_create("a")  # the head is now layer 2, its parent holds block(1)
    s.write(LBA * BLOCK_SIZE, block(2), generation=2)
    crash(s)
    hole(data_file(d, 2), LBA)
    boot[0] = BOOTS[1]
    s = FileStore.open(str(d))
    assert counters(s) == (0, 1)
    with pytest.raises(ChecksumError):  # the parent's value or zeros: unknown, reported
        s.read(LBA * BLOCK_SIZE, BLOCK_SIZE)
    assert [(b.layer, b.block) for b in s.scrub().bad] == [("head", LBA)]
    s.close()


def test_a_data_page_of_zeros_written_back_is_adopted_above_a_parent(tmp_path, boot):
    """Not a hole: a page of zeros that was written is a value (told by SEEK_DATA)."""
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(LBA * BLOCK_SIZE, block(1), generation=1)
    s.snapshot_create("a")
    s.write(LBA * BLOCK_SIZE, block(2), generation=2)
    crash(s)
    page(data_file(d, 2), LBA, bytes(BLOCK_SIZE))
    boot[0] = BOOTS[1]
    s = FileStore.open(str(d))
    assert counters(s) == (1, 0)
    s.close()


def test_a_killed_process_adopts_nothing(tmp_path, boot):
    """The same boot: the page cache survived, so a block failing its check is rot."""
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(LBA * BLOCK_SIZE, block(1), generation=1)
    s.flush()
    s.write(LBA * BLOCK_SIZE, block(2), generation=2)
    crash(s)
    page(data_file(d), LBA, block(7))
    s = FileStore.open(str(d))
    assert counters(s) == (0, 0) and not s.power_loss and s.generation == 2
    with pytest.raises(ChecksumError):
        s.read(LBA * BLOCK_SIZE, BLOCK_SIZE)
    s.close()


def test_bit_rot_on_a_clean_open_is_still_reported(tmp_path, boot):
    d = tmp_path / "r"
    s = FileStore.create(str(d), MIB)
    s.write(LBA * BLOCK_SIZE, block(1), generation=1)
    s.close()
    page(data_file(d), LBA, block(7))
    boot[0] = BOOTS[1]  # even after a reboot: a clean stop is no crash
    s = FileStore.open(str(d))
    assert counters(s) == (0, 0) and not s.power_loss
    with pytest.raises(ChecksumError):
        s.read(LBA * BLOCK_SIZE, BLOCK_SIZE)
    assert [(b.layer, b.block) for b in s.scrub().bad] == [("head", LBA)]
    s.close()


def test_the_verify_after_a_machine_crash_reads_at_disk_speed(tmp_path, boot):
    """The cost of the recovery: it reads the head's written data once. Prints MB/s (the
    figure in docs/formats/replica-store.md); fails only if it is absurdly slow."""
    d = tmp_path / "r"
    size = 64 * MIB
    s = FileStore.create(str(d), size)
    chunk = os.urandom(MIB)
    for i in range(size // MIB):
        s.write(i * MIB, chunk, generation=i + 1)
    s.flush()
    crash(s)
    for name in os.listdir(d):  # from the disk, not the page cache (only these files)
        fd = os.open(d / name, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    boot[0] = BOOTS[1]
    t0 = time.perf_counter()
    s = FileStore.open(str(d))
    took = time.perf_counter() - t0
    assert counters(s) == (0, 0)
    s.close()
    rate = size / MIB / took
    print(f"verify after a machine crash: {size // MIB} MiB in {took:.3f} s = {rate:.0f} MiB/s")
    assert rate > 20
