"""A snapshot revert of an encrypted volume while a client keeps writing, with real
processes: ``cargohold engine --data-key-fd`` over three real replica servers, qemu-io as
the NBD client (tests/unit/frontend/test_encrypted_revert.py has each case alone).

The writer rewrites blocks 32-63 of the first tag block's group (plain and FUA writes,
write-zeroes) while the engine reverts, several times, to a snapshot taken before blocks
0-31 were overwritten: writes that arrive during the revert's hold wait with their tags
put into the cached tag block, which holds the newer tags of blocks 0-31. Afterwards
blocks 0-31 must read the snapshot's content and blocks 32-63 must read (no EIO), on this
engine and on the next one.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from cargohold.constants import MIB
from cargohold.encryption import layout
from tests.support.encrypted_engines import engines_of
from tests.support.nbd_clients import need, qemu_io
from tests.support.replica_cluster import ReplicaCluster

LOGICAL = 16 * MIB
KEY = bytes(range(100, 132))
VID = bytes.fromhex("4e7e4e7e4e7e4e7e4e7e4e7e4e7e4e7e")
REVERTS = 5


@pytest.fixture
def cluster(tmp_path):
    c = ReplicaCluster(tmp_path, layout.physical_size(LOGICAL))
    yield c
    c.stop()


@pytest.fixture
def engines(cluster, tmp_path):
    yield from engines_of(cluster, tmp_path, VID, (KEY,))


def writer_commands(rounds: int) -> list[str]:
    cmds = []
    for n in range(rounds):
        off = (32 + n % 32) * 4096
        kind = n % 5
        if kind == 3:
            cmds.append(f"write -f -P 0x{0x60 + n % 16:02x} {off} 4k")  # FUA
        elif kind == 4:
            cmds.append(f"write -z {off} 4k")
        else:
            cmds.append(f"write -P 0x{0x60 + n % 16:02x} {off} 4k")
    return cmds


def test_reverts_while_a_client_writes_the_same_group_leave_every_block_readable(engines, tmp_path):
    need("qemu-io")
    e1 = engines(1, KEY)
    qemu_io(e1.uri, "write -P 0x41 0 256k", "flush")
    assert e1.ctl(op="snapshot", name="s")["ok"]
    qemu_io(e1.uri, "write -P 0x42 0 128k", "write -P 0x43 0 128k", "flush")
    script = tmp_path / "writer.qemu-io"  # more than it writes: stopped after the reverts
    script.write_text("".join(c + "\n" for c in writer_commands(100_000)))
    with script.open() as commands:  # qemu-io reads its commands from stdin
        writer = subprocess.Popen(
            ["qemu-io", "-f", "raw", e1.uri],
            stdin=commands,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        for _ in range(REVERTS):
            before = e1.ctl(op="status")["counters"].get("encrypted_blocks", 0)
            deadline = time.monotonic() + 60
            while e1.ctl(op="status")["counters"].get("encrypted_blocks", 0) < before + 20:
                assert writer.poll() is None, "the writer ended before the reverts"
                assert time.monotonic() < deadline, "the writer does not write"
                time.sleep(0.005)
            assert e1.ctl(op="snapshot-revert", name="s")["ok"]
            # blocks 0-31 are the snapshot's at once, while the writer goes on
            qemu_io(e1.uri, "read -P 0x41 0 128k")
        assert writer.poll() is None, "the writer stopped"
    finally:
        writer.terminate()
        out, _ = writer.communicate(timeout=60)
    assert "error" not in out.lower() and "fail" not in out.lower(), out[-2000:]
    counters = e1.ctl(op="status")["counters"]
    for reader in (e1, None):
        if reader is None:
            e1.stop()
            reader = engines(2, KEY)
        qemu_io(reader.uri, "read -P 0x41 0 128k", "read 128k 128k")
        assert reader.ctl(op="status")["counters"].get("authentication_errors", 0) == 0
    print("writes restarted by a revert:", counters.get("writes_restarted_by_revert", 0))
