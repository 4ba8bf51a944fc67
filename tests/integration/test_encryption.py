"""An encrypted volume end to end with real processes: ``cargohold engine --data-key-fd``
over three real replica servers, qemu-io and qemu-img as the NBD clients.

(a) after a known plaintext is written, no file under any replica directory contains it,
nor a replica rebuilt from them;
(b) it reads back; (c) an engine started with the wrong key answers reads with I/O errors
and writes nothing (no generation moves, no byte changes); (d) a block flipped in a
replica's file (its checksum fails) and a block replaced together with its checksum (it
fails authentication only) are both read from another replica and repaired.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cargohold.constants import MIB
from cargohold.encryption import layout
from tests.support.encrypted_engines import engines_of
from tests.support.nbd_clients import need, qemu_io
from tests.support.processes import rot
from tests.support.replica_cluster import ReplicaCluster

LOGICAL = 16 * MIB
KEY = bytes(range(100, 132))
VID = bytes.fromhex("5eed5eed5eed5eed5eed5eed5eed5eed")
SECRET = b"".join(b"cargohold-secret-plaintext-%010d\n" % n for n in range(40000))[: 1 * MIB]


@pytest.fixture
def cluster(tmp_path):
    c = ReplicaCluster(tmp_path, layout.physical_size(LOGICAL))
    yield c
    c.stop()


@pytest.fixture
def engines(cluster, tmp_path):
    yield from engines_of(cluster, tmp_path, VID, (KEY,))


def replica_files(cluster: ReplicaCluster) -> list[Path]:
    return [p for s in cluster.servers for p in Path(s.disks[0]).rglob("*") if p.is_file()]


def read_all(uri: str, dest: Path) -> bytes:
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(dest)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest.read_bytes()


def test_replicas_hold_ciphertext_only_and_a_wrong_key_writes_nothing(cluster, engines, tmp_path):
    need("qemu-io", "qemu-img")
    src = tmp_path / "secret.bin"
    src.write_bytes(SECRET)
    e1 = engines(1, KEY)
    st = e1.ctl(op="status")
    assert st["size_bytes"] == layout.physical_size(LOGICAL)
    assert st["encryption"]["key_check"] == "ok"
    qemu_io(
        e1.uri,
        f"write -s {src} 0 1M",
        f"write -s {src} 5124k 1M",  # not aligned to a group
        "write -P 0x5a 12M 1M",
        "flush",
    )
    want = bytearray(LOGICAL)
    want[0 : 1 * MIB] = SECRET
    want[5124 * 1024 : 5124 * 1024 + MIB] = SECRET
    want[12 * MIB : 13 * MIB] = b"\x5a" * MIB
    assert read_all(e1.uri, tmp_path / "back1.raw") == want  # (b)
    qemu_io(e1.uri, "read -P 0x5a 12M 1M", "read -P 0 13M 1M")
    # a fourth replica, rebuilt online in full from a current one: what a rebuild streams
    cluster.create_replica(1, "r3", layout.physical_size(LOGICAL))
    assert e1.ctl(op="add-replica", replica=f"r3@127.0.0.1:{cluster.servers[1].port}")["ok"]
    e1.wait_for(lambda s: s["robustness"] == "healthy", 60, "the rebuild of r3")
    e1.stop()
    assert cluster.digest(1, "r3", 1) == cluster.digest(1, "r1", 1)  # a full copy

    # (a) no replica file holds the plaintext, nor a run of the 0x5a pattern
    files = replica_files(cluster)
    assert len(files) >= 3
    for p in files:
        data = p.read_bytes()
        assert b"cargohold-secret-plaintext" not in data, p
        assert b"\x5a" * 64 not in data, p
    before = [cluster.opened(i, 1) for i in range(3)]
    digests = cluster.digests(1)

    # (c) the wrong key: reads fail, writes are refused, nothing changes on the replicas
    e2 = engines(2, bytes(32))
    assert e2.ctl(op="status")["encryption"]["key_check"] == "failed"
    bad = qemu_io(e2.uri, "read 0 4k", check=False)
    assert "Input/output error" in bad.stdout + bad.stderr, bad
    bad = qemu_io(e2.uri, "write -P 0x11 0 4k", "write -z 1M 64k", "flush", check=False)
    assert "failed" in (bad.stdout + bad.stderr), bad
    counters = e2.ctl(op="status")["counters"]
    assert counters.get("authentication_errors", 0) >= 1
    e2.stop()
    after = [cluster.opened(i, 2) for i in range(3)]
    assert [x["generation"] for x in after] == [x["generation"] for x in before]
    assert cluster.digests(2) == digests
    assert "does not authenticate" in e2.output()

    # the right key again: everything is there
    e3 = engines(3, KEY)
    assert read_all(e3.uri, tmp_path / "back3.raw") == want
    e3.stop()

    # (d) rot in a block of r0 (its checksum fails) and a block of r0 replaced together with
    # its checksum (only authentication fails): both read from another replica, repaired
    cluster.servers[0].stop()
    replica = os.path.join(cluster.servers[0].disks[0], "replicas", "r0")
    first = 12 * MIB // 4096  # the 0x5a megabyte
    rot(os.path.join(replica, "layer-000001.data"), [layout.data_block(first + 3)])
    replace_block(replica, layout.data_block(first + 70), layout.data_block(first + 71))
    cluster.servers[0] = cluster.servers[0].__class__(cluster.servers[0].disks).start()
    e4 = engines(4, KEY)
    # one read each (a read that meets rot is served whole by another replica)
    qemu_io(e4.uri, "read -P 0x5a 12M 256k", "read -P 0x5a 12544k 256k")
    st = e4.wait_for(
        lambda s: (
            s["counters"].get("repaired_blocks", 0) >= 1
            and s["counters"].get("authentication_repaired", 0) >= 1
        ),
        30,
        "both repairs",
    )
    c = st["counters"]
    assert c["checksum_errors"] >= 1 and c["authentication_errors"] >= 1, c
    qemu_io(e4.uri, "read -P 0x5a 12M 1M")
    e4.stop()
    assert len(set(cluster.digests(4))) == 1  # every replica holds the same ciphertext again


def replace_block(replica: str, dst: int, src: int) -> None:
    """Physical block ``dst`` of the replica's head layer overwritten with block ``src``,
    its checksum recorded with it (the replica server stopped): the store sees nothing
    wrong; a write around the engine, or a block moved by someone who could edit both."""
    from cargohold.store.base import block_crcs
    from cargohold.store.layer import Layer

    layer = Layer.open(replica, 1)
    try:
        moved = bytearray(4096)
        layer.pread_into(src, memoryview(moved))
        layer.pwrite(dst, memoryview(moved))
        crc = block_crcs(moved)[0]
        layer.cur[dst] = crc
        layer.pend[dst] = crc
        layer.sync()
    finally:
        layer.close()
