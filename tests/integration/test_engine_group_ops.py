"""The engine's control ops for group snapshots and changed-block metadata, on a real engine
over three real replica servers (loopback), with qemu-io as the NBD client:

- ``hold`` holds writes (a write waits until ``release``), is idempotent for its group and
  Busy for another; a snapshot taken inside the hold (``snapshot`` with ``hold``) works, one
  after the hold expired (its deadline passed) is refused, and writes resume by themselves;
- ``snapshot-metadata`` answers a snapshot's allocated blocks and the blocks changed between
  two snapshots, paged by ``offset`` and ``max_results``, equal to what was written — of an
  encrypted volume too, in its logical offsets (its replicas hold ciphertext and tag blocks
  at other, physical offsets).
"""

from __future__ import annotations

import threading
import time

import pytest

from cargohold.encryption import layout
from tests.support.encrypted_engines import engines_of
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.replica_cluster import ReplicaCluster

MIB = 1 << 20
SIZE = 64 * MIB


@pytest.fixture(scope="module")
def engine(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One engine for the module (the tests use distinct snapshot names and ranges)."""
    need("qemu-io")
    tmp_path = tmp_path_factory.mktemp("engine")
    c = ReplicaCluster(tmp_path, SIZE)
    e = None
    try:
        e = EngineProc("vol", c.specs(), 1, str(tmp_path), local="r0").start()
        yield e
    finally:
        if e is not None:
            e.stop()
            assert "Traceback" not in e.output(), e.output()
        c.stop()


def test_hold_release_and_expiry(engine: EngineProc) -> None:
    e = engine
    assert e.ctl(op="hold", group="g1", seconds=30)["hold"]["state"] == "held"
    assert e.ctl(op="hold", group="g1", seconds=30)["ok"]  # the same group: the same hold
    other = e.ctl(op="hold", group="g2", seconds=30)
    assert not other["ok"] and other["type"] == "Busy", other
    done = threading.Event()
    t = threading.Thread(target=lambda: (qemu_io(e.uri, "write -P 0x11 0 4k"), done.set()))
    t.start()
    assert not done.wait(1.0), "a write went through a held volume"
    snap = e.ctl(op="snapshot", name="in-hold", hold="g1")
    assert snap["ok"], snap
    assert e.ctl(op="status")["hold"]["state"] == "held"
    assert e.ctl(op="release", group="g1")["hold"]["state"] == "released"
    assert done.wait(30), "the write did not resume after the release"
    t.join()
    # the snapshot inside the hold does not have the write that waited; the head does
    assert e.ctl(op="release", group="g1")["ok"]  # again: fine
    # a hold that expires: writes resume by themselves, a snapshot inside it is refused
    assert e.ctl(op="hold", group="g3", seconds=1)["ok"]
    e.wait_for(lambda s: (s.get("hold") or {}).get("state") == "expired", 10, "the expiry")
    qemu_io(e.uri, "write -P 0x22 4k 4k")
    late = e.ctl(op="snapshot", name="late", hold="g3")
    assert not late["ok"] and late["type"] == "WrongState" and "expired" in late["error"], late
    for bad in ({"group": "g4"}, {"group": "g4", "seconds": 0}, {"group": "", "seconds": 5}):
        r = e.ctl(op="hold", **bad)
        assert not r["ok"] and r["type"] == "InvalidArgument", (bad, r)
    names = [s["name"] for s in e.ctl(op="snapshots")["snapshots"]]
    assert "in-hold" in names and "late" not in names


def pages(e: EngineProc, **req: object) -> list[list[int]]:
    """Every run, page after page (``max_results`` 1: one run a page)."""
    runs, offset = [], 0
    while True:
        r = e.ctl(op="snapshot-metadata", offset=offset, max_results=1, **req)
        assert r["ok"], r
        runs += r["runs"]
        assert len(r["runs"]) <= 1 and r["next_offset"] > offset
        if r["next_offset"] >= r["volume_capacity_bytes"]:
            return runs
        offset = r["next_offset"]


@pytest.fixture
def encrypted_engine(tmp_path):  # type: ignore[no-untyped-def]
    need("qemu-io")
    c = ReplicaCluster(tmp_path, layout.physical_size(SIZE))
    try:
        key = bytes(range(40, 72))
        for engines in engines_of(c, tmp_path, bytes.fromhex("ab" * 16), (key,)):
            yield engines(1, key)
    finally:
        c.stop()


def test_snapshot_metadata_allocated_and_delta(engine: EngineProc) -> None:
    check_snapshot_metadata(engine)


def test_snapshot_metadata_of_an_encrypted_volume_is_in_its_logical_offsets(
    encrypted_engine: EngineProc,
) -> None:
    check_snapshot_metadata(encrypted_engine)


def check_snapshot_metadata(e: EngineProc) -> None:
    qemu_io(e.uri, "write -P 0x01 0 1M", "write -P 0x02 8M 64k", "write -P 0x03 40M 4k")
    assert e.ctl(op="snapshot", name="s1")["ok"]
    qemu_io(e.uri, "write -P 0x04 512k 8k", "discard 8M 64k", "write -P 0x05 20M 12k")
    assert e.ctl(op="snapshot", name="s2")["ok"]
    qemu_io(e.uri, "write -P 0x06 30M 1M")  # after s2: in no answer
    whole = e.ctl(op="snapshot-metadata", snapshot="s1")
    assert whole["runs"] == [[0, MIB], [8 * MIB, 64 << 10], [40 * MIB, 4096]], whole
    assert whole["volume_capacity_bytes"] == SIZE and whole["next_offset"] == SIZE
    assert pages(e, snapshot="s1") == whole["runs"]
    # s2: the discarded range is no longer allocated; the new 12k is
    s2 = e.ctl(op="snapshot-metadata", snapshot="s2")["runs"]
    assert s2 == [[0, MIB], [20 * MIB, 12 << 10], [40 * MIB, 4096]], s2
    delta = e.ctl(op="snapshot-metadata", snapshot="s2", base="s1")["runs"]
    assert delta == [[512 << 10, 8 << 10], [8 * MIB, 64 << 10], [20 * MIB, 12 << 10]], delta
    assert pages(e, snapshot="s2", base="s1") == delta
    # errors: unknown snapshots, a base newer than the target, bad paging
    for req, kind in (
        ({"snapshot": "nope"}, "NotFound"),
        ({"snapshot": "s2", "base": "nope"}, "NotFound"),
        ({"snapshot": "s1", "base": "s2"}, "InvalidArgument"),
        ({"snapshot": "s1", "offset": -1}, "InvalidArgument"),
        ({"snapshot": "s1", "offset": SIZE + 1}, "InvalidArgument"),
        ({"snapshot": "s1", "max_results": -5}, "InvalidArgument"),
        ({}, "InvalidArgument"),
    ):
        r = e.ctl(op="snapshot-metadata", **req)
        assert not r["ok"] and r["type"] == kind, (req, r)
    time.sleep(0)  # (the engine keeps serving: the next request works)
    assert e.ctl(op="status")["ok"]
