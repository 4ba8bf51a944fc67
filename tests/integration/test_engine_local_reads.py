"""The engine reads its local replica's files directly (engine/local_reads.py): never stale.

A real engine over three real replica servers, r0 local. Each test would fail if the local
path read a layer chain the engine had changed (snapshot, revert, deletion, expansion), kept
reading after a newer engine took the replica, or trusted a rotted block.
"""

from __future__ import annotations

import os
import time

import pytest

from cargohold.constants import MIB
from tests.integration.engine_procs import EngineProc
from tests.integration.test_engine import SIZE, Cluster, need, qemu_io


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.fixture
def engine(cluster, tmp_path):
    started: list[EngineProc] = []

    def make(epoch: int, **kw) -> EngineProc:  # type: ignore[no-untyped-def]
        e = EngineProc("vol", cluster.specs(), epoch, str(tmp_path), local="r0", **kw).start()
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()
    for e in started:
        assert "Traceback" not in e.output() and "Logging error" not in e.output(), e.output()


def counters(e: EngineProc) -> dict[str, int]:
    return e.ctl(op="status")["counters"]


def test_local_reads_see_every_write_across_snapshots_reverts_and_expansion(cluster, engine):
    need("qemu-io")
    e = engine(1)
    qemu_io(e.uri, "write -P 0x11 0 4M", "read -P 0x11 0 4M")
    assert counters(e).get("local_reads", 0) >= 1
    # a snapshot gives the replicas a new head: reads must follow it at once
    assert e.ctl(op="snapshot", name="s1")["ok"]
    qemu_io(e.uri, "write -P 0x22 0 1M", "read -P 0x22 0 1M", "read -P 0x11 1M 3M")
    # deleting the snapshot folds layers on the replicas while reads go on
    assert e.ctl(op="snapshot-delete", name="s1")["ok"]
    qemu_io(e.uri, "read -P 0x22 0 1M", "read -P 0x11 1M 3M")
    assert e.ctl(op="snapshot", name="s2")["ok"]
    qemu_io(e.uri, "write -P 0x33 0 2M", "read -P 0x33 0 2M")
    assert e.ctl(op="snapshot-revert", name="s2")["ok"]
    qemu_io(e.uri, "read -P 0x22 0 1M", "read -P 0x11 1M 3M")
    assert e.ctl(op="expand", size=SIZE + 64 * MIB)["ok"]
    far = SIZE + 32 * MIB
    qemu_io(e.uri, f"write -P 0x44 {far} 1M", f"read -P 0x44 {far} 1M", "read -P 0x22 0 1M")
    before = counters(e).get("local_reads", 0)
    qemu_io(e.uri, "read -P 0x11 1M 3M")
    c = counters(e)
    assert c["local_reads"] > before, c  # still local after all of it
    assert c.get("checksum_errors", 0) == 0, c
    assert len(set(cluster.digests(1))) == 1


def test_a_newer_engine_ends_the_old_engines_local_reads(cluster, engine):
    need("qemu-io")
    old = engine(1)
    qemu_io(old.uri, "write -P 0x55 0 1M", "read -P 0x55 0 1M")
    assert counters(old).get("local_reads", 0) >= 1
    new = engine(2)
    time.sleep(0.2)  # longer than local_reads.CHECK_EVERY
    p = qemu_io(old.uri, "read 0 4k", check=False)
    assert p.returncode != 0 and "read failed" in p.stdout, p.stdout + p.stderr
    assert old.ctl(op="status")["fenced"]
    qemu_io(new.uri, "read -P 0x55 0 1M")


def test_rot_in_the_local_files_is_read_around_and_repaired(cluster, engine):
    need("qemu-io")
    e = engine(1)
    qemu_io(e.uri, "write -P 0x66 0 1M", "flush", "read -P 0x66 0 1M")
    data = os.path.join(cluster.servers[0].disks[0], "replicas", "r0", "layer-000001.data")
    with open(data, "r+b") as f:  # rot under the running engine: block 3 of the local replica
        f.seek(4096 + 3 * 4096 + 10)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    qemu_io(e.uri, "read -P 0x66 0 1M")  # never the rotted byte
    st = e.wait_for(lambda s: s["counters"].get("repaired_blocks", 0) >= 1, 30, "the repair")
    assert st["counters"]["local_read_checksum_retries"] >= 1, st["counters"]
    assert st["counters"]["checksum_errors"] >= 1, st["counters"]
    before = st["counters"]["local_reads"]
    qemu_io(e.uri, "read -P 0x66 0 1M")  # repaired in place: local again, and clean
    c = counters(e)
    assert c["local_reads"] > before and c["checksum_errors"] == st["counters"]["checksum_errors"]
    assert len(set(cluster.digests(1))) == 1


def test_with_local_reads_off_every_read_goes_to_a_server(cluster, engine):
    need("qemu-io")
    os.environ["CARGOHOLD_ENGINE_LOCAL_READS"] = "false"
    try:
        e = engine(1)
    finally:
        del os.environ["CARGOHOLD_ENGINE_LOCAL_READS"]
    qemu_io(e.uri, "write -P 0x77 0 1M", "read -P 0x77 0 1M")
    c = counters(e)
    assert c.get("local_reads", 0) == 0 and c["read"] >= 1, c
