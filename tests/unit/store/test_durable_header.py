"""The head map header's durable generation, boot id and power-loss flag
(docs/formats/replica-store.md, "Machine crashes"): what each operation stores there, what
an open after a crash makes of them, and version-1 files that lack them."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import struct
import uuid

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import ChecksumError
from cargohold.store import format as fmt
from cargohold.store import reader
from cargohold.store.file_store import FileStore
from cargohold.store.flush_gate import FlushGate
from cargohold.store.memory_store import MemoryStore

SAMPLE = pathlib.Path(__file__).parents[2] / "data" / "replica-store-sample"
BOOTS = [str(uuid.UUID(int=n)) for n in (0xA, 0xB, 0xC)]


@pytest.fixture
def boot(monkeypatch) -> list[str]:
    current = [BOOTS[0]]
    monkeypatch.setattr(reader, "boot_id", lambda: current[0])
    return current


def header(path: pathlib.Path) -> fmt.MapHeader:
    return fmt.decode_map_header(path.read_bytes()[: fmt.HEADER_SIZE])


def block(tag: int) -> bytes:
    return bytes([tag]) * BLOCK_SIZE


def crash(s: FileStore) -> None:
    """The process (or the machine) stops: no flush, no clean flag; the files keep what the
    page cache held."""
    for layer in s._layers.values():
        layer.close()
    s._layers = {}


def test_durable_follows_completed_flushes_and_mark_current(tmp_path, boot):
    s = FileStore.create(str(tmp_path / "r"), MIB)
    s.write(0, block(1), generation=1)
    s.write(BLOCK_SIZE, block(2), generation=2)
    assert (s.generation, s.durable) == (2, 0)  # written, not flushed
    s.flush()
    assert s.durable == 2
    s.write(0, block(3), generation=3)
    s.snapshot_create("a")  # flushes; the new head carries durable and the boot id
    h = header(tmp_path / "r" / "layer-000002.map")
    assert (s.durable, h.durable, h.boot_id) == (3, 3, uuid.UUID(BOOTS[0]).bytes)
    s.write(0, block(5), generation=5)  # 4 is missing: complete through 3
    s.flush()
    assert (s.generation, s.durable) == (3, 3)  # never above the generation
    s.mark_current(5)
    assert s.durable == 5 and s.stats()["durable"] == 5
    s.mark_current(4, reset=True)
    assert s.durable == 4
    s.close()
    assert header(tmp_path / "r" / "layer-000002.map").durable == 4


def test_a_flush_through_the_gate_moves_durable_when_it_completes(tmp_path, boot):
    s = FileStore.create(str(tmp_path / "r"), MIB)
    s.write(0, block(1), generation=1)
    mark = s.durable_mark()  # a FLUSH begins ...
    s.write(BLOCK_SIZE, block(2), generation=2)  # ... a write lands meanwhile
    s.flushed(mark)
    assert s.durable == 1  # what was complete when it began
    asyncio.run(FlushGate().flush(s))
    assert s.durable == 2
    s.write(0, block(3), generation=3)
    mark = s.durable_mark()
    s.mark_current(3)
    s.write(0, block(4), generation=4)
    s.flushed(mark)  # begun before MARK_CURRENT: says nothing any more
    assert s.durable == 3
    s.close()


def test_a_machine_crash_falls_back_to_the_last_flush_until_mark_current(tmp_path, boot):
    d = str(tmp_path / "r")
    s = FileStore.create(d, MIB)
    s.write(0, block(1), generation=1)
    s.flush()
    s.write(BLOCK_SIZE, block(2), generation=2)
    s.write(2 * BLOCK_SIZE, block(3), generation=3)
    crash(s)
    # the kernel wrote back the record of block 2 but not its data
    with open(f"{d}/layer-000001.data", "r+b") as f:
        f.seek(fmt.HEADER_SIZE + 2 * BLOCK_SIZE)
        f.write(bytes(BLOCK_SIZE))
    boot[0] = BOOTS[1]
    s = FileStore.open(d)
    assert (s.generation, s.seen, s.durable, s.power_loss) == (1, 3, 1, True)
    assert s.stats()["power_loss"] is True
    assert (s.stats()["adopted_blocks"], s.stats()["lost_blocks"]) == (1, 0)
    assert s.read(BLOCK_SIZE, BLOCK_SIZE) == block(2)  # survived: kept, above the generation
    # torn: the data page holds its value at the flush (zeros); adopted, and still recorded
    # above the generation, so a rebuild copies it again
    assert s.read(2 * BLOCK_SIZE, BLOCK_SIZE) == bytes(BLOCK_SIZE)
    assert s.changed_since(s.generation) == [(BLOCK_SIZE, 2 * BLOCK_SIZE)]
    s.close()
    s = FileStore.open(d)  # a clean stop does not clear it
    assert (s.generation, s.power_loss) == (1, True)
    crash(s)
    boot[0] = BOOTS[2]  # nor a second machine crash
    s = FileStore.open(d)
    assert (s.generation, s.power_loss) == (1, True)
    s.write(2 * BLOCK_SIZE, block(3), generation=4)  # what a rebuild copies
    s.mark_current(4)
    assert (s.generation, s.durable, s.power_loss) == (4, 4, False)
    crash(s)
    s = FileStore.open(d)  # a killed process afterwards: as before
    assert (s.generation, s.power_loss, s.read(0, 3 * BLOCK_SIZE)) == (
        4,
        False,
        block(1) + block(2) + block(3),
    )
    s.close()


def test_the_version_1_sample_recovers_as_before(tmp_path, boot):
    """A header without the fields (version 1 as older code writes it) is never taken for a
    machine crash; the open then stores them."""
    shutil.copytree(SAMPLE, tmp_path / "r")
    head = tmp_path / "r" / "layer-000002.map"
    assert header(head).boot_id is None
    raw = bytearray(head.read_bytes())
    struct.pack_into("<I", raw, fmt.MAP_FLAGS_OFFSET, 0)  # not closed cleanly
    head.write_bytes(bytes(raw))
    boot[0] = BOOTS[1]
    s = FileStore.open(str(tmp_path / "r"))
    assert (s.generation, s.power_loss, s.durable) == (4, False, 4)
    assert s.read(0, 2 * BLOCK_SIZE) == b"A" * BLOCK_SIZE + b"C" * BLOCK_SIZE
    h = header(head)
    assert (h.version, h.boot_id, h.clean) == (1, uuid.UUID(BOOTS[1]).bytes, False)
    s.close()


def test_older_code_clears_the_fields_it_does_not_keep(tmp_path, boot):
    """Older code stores the flags word with its clean bit alone: the durable generation it
    did not maintain is then not trusted, and a crash recovers as it always did."""
    d = str(tmp_path / "r")
    s = FileStore.create(d, MIB)
    s.write(0, block(1), generation=1)
    s.flush()
    s.write(0, block(2), generation=2)
    crash(s)
    raw = bytearray((tmp_path / "r" / "layer-000001.map").read_bytes())
    struct.pack_into("<I", raw, fmt.MAP_FLAGS_OFFSET, 0)  # an older server ran it
    (tmp_path / "r" / "layer-000001.map").write_bytes(bytes(raw))
    boot[0] = BOOTS[1]
    s = FileStore.open(d)
    assert (s.generation, s.power_loss) == (2, False)
    s.close()


def test_an_unknown_boot_id_is_taken_for_a_machine_crash(tmp_path, boot):
    d = str(tmp_path / "r")
    s = FileStore.create(d, MIB)
    s.write(0, block(1), generation=1)
    crash(s)
    boot[0] = ""  # no /proc: the same kernel cannot be proven
    s = FileStore.open(d)
    assert (s.generation, s.seen, s.power_loss) == (0, 1, True)
    s.close()


def test_an_unknown_boot_id_adopts_no_torn_block(tmp_path, boot):
    """Without this kernel's boot id a machine crash is not proven: the generation falls
    back (the safe side), but a block failing its check may be rot, not a torn write, so it
    is not adopted: it stays reported."""
    d = str(tmp_path / "r")
    s = FileStore.create(d, MIB)
    s.write(0, block(1), generation=1)
    crash(s)
    with open(tmp_path / "r" / "layer-000001.data", "r+b") as f:
        f.seek(fmt.HEADER_SIZE)
        f.write(block(7))  # neither checksum
    boot[0] = ""
    s = FileStore.open(d)
    assert s.power_loss and s.counters["adopted_blocks"] == 0
    with pytest.raises(ChecksumError):
        s.read(0, BLOCK_SIZE)
    s.close()


def test_the_memory_store_reports_the_same_fields():
    m = MemoryStore(MIB)
    m.write(0, block(1), generation=1)
    assert (m.durable, m.power_loss) == (0, False)
    m.flush()
    assert (m.durable, m.stats()["durable"], m.stats()["power_loss"]) == (1, 1, False)
    m.write(0, block(3), generation=3)
    m.mark_current(3)
    assert m.durable == 3
