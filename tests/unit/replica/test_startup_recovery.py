"""The replica server's start recovers, before it listens, every replica whose head says
its machine crashed (its open verifies the head's data, which can outlast an engine's OPEN
timeout), and only those: a killed process or a clean stop stay lazy
(docs/formats/replica-store.md, "Machine crashes")."""

from __future__ import annotations

import logging
import uuid

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.replica.registry import Registry
from cargohold.store import format as fmt
from cargohold.store import reader
from tests.unit.store.test_torn_blocks import BOOTS, LBA, block, counters, crash, data_file, page


@pytest.fixture
def boot(monkeypatch) -> list[str]:
    current = [BOOTS[0]]
    monkeypatch.setattr(reader, "boot_id", lambda: current[0])
    return current


def test_the_server_start_recovers_machine_crashes_first_and_only_those(tmp_path, boot, caplog):
    disk = tmp_path / "disk"
    reg = Registry([str(disk)])
    for rid in ("crashed", "killed", "stopped"):
        reg.create(rid, MIB).store.write(LBA * BLOCK_SIZE, block(1), generation=1)
    reg.open["stopped"].store.close()
    for rid in ("crashed", "killed"):
        crash(reg.open[rid].store)
    reg.open.clear()
    page(data_file(disk / "replicas" / "crashed"), LBA, block(9))  # torn
    # "killed" was stopped by a kill -9 in this boot (its header says so)
    boot[0] = BOOTS[1]
    with open(disk / "replicas" / "killed" / "layer-000001.map", "r+b") as f:
        f.seek(fmt.MAP_BOOT_OFFSET)
        f.write(uuid.UUID(BOOTS[1]).bytes)
    reg = Registry([str(disk)])
    with caplog.at_level(logging.WARNING, logger="cargohold.replica"):
        assert reg.recover_crashed() == ["crashed"]
    assert set(reg.open) == {"crashed"}  # the others stay lazy
    assert counters(reg.open["crashed"].store) == (1, 0)
    assert "1 torn blocks adopted" in caplog.text
    reg.close_all()


def test_a_replica_with_bad_files_does_not_stop_the_start_nor_the_others(tmp_path, boot, caplog):
    """Bad input never takes the daemon down: a replica whose meta file is wrong is
    logged and left to its OPEN's error; the crashed one beside it is still recovered, and
    the agent's wait sees each recovery begun also ended (RECOVERING, RECOVERED)."""
    from cargohold.constants import RECOVERED, RECOVERING
    from cargohold.store.file_store import META_FILE

    disk = tmp_path / "disk"
    reg = Registry([str(disk)])
    for rid in ("bad", "crashed"):
        reg.create(rid, MIB).store.write(LBA * BLOCK_SIZE, block(1), generation=1)
        crash(reg.open[rid].store)
    reg.open.clear()
    # checksummed and well-formed, but no head layer named: a KeyError, not a FormatError
    (disk / "replicas" / "bad" / META_FILE).write_bytes(fmt.encode_meta({"format": 1}))
    boot[0] = BOOTS[1]
    reg = Registry([str(disk)])
    with caplog.at_level(logging.WARNING, logger="cargohold.replica"):
        assert reg.recover_crashed() == ["crashed"]
    assert "replica bad: recovery after a machine crash failed" in caplog.text
    assert caplog.text.count(RECOVERING) == caplog.text.count(RECOVERED)
    reg.close_all()
