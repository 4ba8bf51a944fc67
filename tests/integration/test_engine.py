"""The volume engine with real replica servers and real NBD clients (qemu-io, fio).

Three replica servers on loopback stand in for three nodes; ``cargohold engine`` serves the
volume over NBD. Each test checks bytes (qemu-io -P, fio verify=crc32c) and that the
replicas end up identical, comparing their content read directly from each server.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from cargohold.constants import MIB
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.processes import ServerProc
from tests.support.replica_cluster import ReplicaCluster

SIZE = 128 * MIB


@pytest.fixture
def cluster(tmp_path):
    c = ReplicaCluster(tmp_path, SIZE)
    yield c
    c.stop()


@pytest.fixture
def engine_factory(cluster, tmp_path):
    started: list[EngineProc] = []

    def make(epoch: int, **kw) -> EngineProc:  # type: ignore[no-untyped-def]
        e = EngineProc("vol", cluster.specs(), epoch, str(tmp_path), local="r0", **kw).start()
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()
    for e in started:  # nothing went wrong unseen: no traceback, no logging error
        assert "Traceback" not in e.output() and "Logging error" not in e.output(), e.output()


def test_writes_reach_every_replica_and_read_back(cluster, engine_factory):
    need("qemu-io")
    e = engine_factory(1)
    qemu_io(e.uri, "write -P 0x5a 0 8M", "write -P 0xc3 100M 1M", "write -z 2M 1M", "flush")
    qemu_io(
        e.uri, "read -P 0x5a 0 2M", "read -P 0 2M 1M", "read -P 0x5a 3M 5M", "read -P 0xc3 100M 1M"
    )
    st = e.ctl(op="status")
    assert st["robustness"] == "healthy" and st["generation"] == 3
    assert [r["generation"] for r in st["replicas"]] == [3, 3, 3]
    assert len(set(cluster.digests(1))) == 1


def test_a_replica_killed_under_fio_then_delta_rebuilt(cluster, engine_factory):
    need("fio")
    e = engine_factory(1)
    fio = subprocess.Popen(
        [
            "fio",
            "--name=v",
            "--ioengine=nbd",
            f"--uri={e.uri}",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    e.wait_for(lambda s: s["generation"] > 1500, 60, "writes to flow")
    cluster.servers[2].kill()  # SIGKILL, mid-workload
    out, _ = fio.communicate(timeout=180)
    assert fio.returncode == 0 and "err= 0" in out, out  # the client saw no error
    st = e.ctl(op="status")
    assert st["robustness"] == "degraded" and e.modes()["r2"] == "ERR"
    stale_gen = st["replicas"][2]["generation"]
    assert 0 < stale_gen < st["generation"]

    cluster.restart(2)
    new = f"r2@127.0.0.1:{cluster.servers[2].port}"
    assert e.ctl(op="add-replica", replica=new)["ok"]
    st = e.wait_for(lambda s: s["robustness"] == "healthy", 60, "the rebuild")
    rb = st["replicas"][2]["rebuild"]
    # a delta from the generation the replica had persisted: at least the one the engine
    # last saw it acknowledge (writes in flight at the kill may have reached its disk too,
    # their replies lost; the rebuild checks that history before it trusts it)
    assert stale_gen <= rb["since"] < st["generation"]
    assert rb["copied_bytes"] < 33 * MIB  # of a 128 MiB volume: only what changed
    assert len(set(cluster.digests(1))) == 1


def test_a_newer_engine_fences_the_old_one(cluster, engine_factory):
    need("qemu-io")
    old = engine_factory(1)
    qemu_io(old.uri, "write -P 0x11 0 1M", "flush")
    new = engine_factory(2)
    p = qemu_io(old.uri, "write -P 0x22 0 4k", check=False)
    # refused (fenced on every replica; NBD has no EROFS, so the client sees EPERM)
    assert p.returncode != 0 and "write failed" in p.stdout, p.stdout + p.stderr
    qemu_io(new.uri, "read -P 0x11 0 1M")  # nothing the old engine acknowledged is lost
    assert old.ctl(op="status")["fenced"]
    qemu_io(new.uri, "write -P 0x33 1M 1M", "flush", "read -P 0x33 1M 1M")
    assert len(set(cluster.digests(2))) == 1


def test_an_engine_restart_rebuilds_the_replica_that_fell_behind(cluster, engine_factory):
    need("qemu-io")
    e1 = engine_factory(1)
    qemu_io(e1.uri, "write -P 0x44 0 4M", "flush")
    cluster.servers[1].kill()
    qemu_io(e1.uri, "write -P 0x55 1M 1M", "flush")  # r1 misses this
    assert e1.modes()["r1"] == "ERR"
    e1.stop()
    cluster.restart(1)
    e2 = engine_factory(2)  # decides from persisted generations: r1 is stale
    st = e2.wait_for(lambda s: s["robustness"] == "healthy", 60, "the rebuild")
    assert st["replicas"][1]["rebuild"]["since"] > 0
    qemu_io(e2.uri, "read -P 0x44 0 1M", "read -P 0x55 1M 1M", "read -P 0x44 2M 2M")
    assert len(set(cluster.digests(2))) == 1


def test_a_bad_block_is_read_elsewhere_and_repaired(cluster, engine_factory):
    need("qemu-io")
    e1 = engine_factory(1)
    qemu_io(e1.uri, "write -P 0x66 0 1M", "flush")
    e1.stop()
    cluster.servers[0].stop()
    data = os.path.join(cluster.servers[0].disks[0], "replicas", "r0", "layer-000001.data")
    with open(data, "r+b") as f:  # rot: flip one byte of block 3 on the local replica
        f.seek(4096 + 3 * 4096 + 10)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    cluster.servers[0] = ServerProc(cluster.servers[0].disks).start()
    e2 = EngineProc("vol", cluster.specs(), 2, e1.workdir, local="r0").start()
    try:
        qemu_io(e2.uri, "read -P 0x66 0 1M")  # served from another replica
        st = e2.wait_for(lambda s: s["counters"].get("repaired_blocks", 0) >= 1, 30, "repair")
        assert st["counters"]["checksum_errors"] >= 1
        qemu_io(e2.uri, "read -P 0x66 0 1M")
        assert len(set(cluster.digests(2))) == 1
    finally:
        e2.stop()


def test_snapshots_revert_and_online_expansion_through_the_engine(cluster, engine_factory):
    need("qemu-io")
    e = engine_factory(1)
    qemu_io(e.uri, "write -P 0x71 0 2M", "flush")
    snap = e.ctl(op="snapshot", name="before", labels={"app": "db"})
    assert snap["ok"] and snap["snapshot"]["name"] == "before", snap
    qemu_io(e.uri, "write -P 0x72 0 1M", "flush")
    assert [s["name"] for s in e.ctl(op="snapshots")["snapshots"]] == ["before"]
    bad = e.ctl(op="snapshot", name="before")
    assert not bad["ok"] and bad["type"] == "AlreadyExists"
    gen = e.ctl(op="status")["generation"]
    assert e.ctl(op="snapshot-revert", name="before")["ok"]
    st = e.ctl(op="status")
    assert st["generation"] == gen + 1 and {r["generation"] for r in st["replicas"]} == {gen + 1}
    qemu_io(e.uri, "read -P 0x71 0 2M")  # back to the snapshot on every replica
    assert len(set(cluster.digests(1))) == 1
    deleted = e.ctl(op="snapshot-delete", name="before")
    assert deleted["ok"], deleted
    assert e.ctl(op="snapshots")["snapshots"] == []
    # online expansion: every replica grows; a client that reconnects sees the new size
    assert e.ctl(op="expand", size=SIZE + 64 * MIB)["size_bytes"] == SIZE + 64 * MIB
    qemu_io(e.uri, f"write -P 0x73 {SIZE + 32 * MIB} 1M", f"read -P 0x73 {SIZE + 32 * MIB} 1M")
    assert not e.ctl(op="expand", size=4096)["ok"]  # shrinking is refused
    qemu_io(e.uri, "read -P 0x71 0 2M")


# --- local reads (engine/local_reads.py): never stale -------------------------------------
# r0 is local: the engine reads its files directly. Each test would fail if that path read a
# layer chain the engine had changed (snapshot, revert, deletion, expansion), kept reading
# after a newer engine took the replica, or trusted a rotted block.


def counters(e: EngineProc) -> dict[str, int]:
    return e.ctl(op="status")["counters"]


def test_local_reads_see_every_write_across_snapshots_reverts_and_expansion(
    cluster, engine_factory
):
    need("qemu-io")
    e = engine_factory(1)
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


def test_a_newer_engine_ends_the_old_engines_local_reads(cluster, engine_factory):
    need("qemu-io")
    old = engine_factory(1)
    qemu_io(old.uri, "write -P 0x55 0 1M", "read -P 0x55 0 1M")
    assert counters(old).get("local_reads", 0) >= 1
    new = engine_factory(2)
    time.sleep(0.2)  # longer than local_reads.CHECK_EVERY
    p = qemu_io(old.uri, "read 0 4k", check=False)
    assert p.returncode != 0 and "read failed" in p.stdout, p.stdout + p.stderr
    assert old.ctl(op="status")["fenced"]
    qemu_io(new.uri, "read -P 0x55 0 1M")


def test_rot_in_the_local_files_is_read_around_and_repaired(cluster, engine_factory):
    need("qemu-io")
    e = engine_factory(1)
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


def test_with_local_reads_off_every_read_goes_to_a_server(cluster, engine_factory):
    need("qemu-io")
    os.environ["CARGOHOLD_ENGINE_LOCAL_READS"] = "false"
    try:
        e = engine_factory(1)
    finally:
        del os.environ["CARGOHOLD_ENGINE_LOCAL_READS"]
    qemu_io(e.uri, "write -P 0x77 0 1M", "read -P 0x77 0 1M")
    c = counters(e)
    assert c.get("local_reads", 0) == 0 and c["read"] >= 1, c
