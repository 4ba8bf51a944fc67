"""A data-key rotation by rewriting, online, with real processes: ``cargohold engine
--data-key-fd`` over three real replica servers, qemu-io and qemu-img as the NBD clients.

A known pattern is written under the old key; ``data-keys [new, old]`` starts the sweep
(capped by ``rekey_bandwidth`` so that it takes a few seconds); a qemu-io write workload
runs while it sweeps and sees no error; the engine is stopped mid-sweep and started again
with both keys (the sweep starts over and finds the done groups under the new key); once
``done``, an engine given ONLY the new key reads every byte back as written.
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from cargohold.constants import MIB
from cargohold.encryption import layout
from tests.support.encrypted_engines import engines_of
from tests.support.nbd_clients import need, qemu_io
from tests.support.replica_cluster import ReplicaCluster

LOGICAL = 16 * MIB
OLD = bytes(range(100, 132))
NEW = bytes(range(1, 33))
VID = bytes.fromhex("5eed5eed5eed5eed5eed5eed5eed5eed")


@pytest.fixture
def cluster(tmp_path):
    c = ReplicaCluster(tmp_path, layout.physical_size(LOGICAL))
    yield c
    c.stop()


@pytest.fixture
def engines(cluster, tmp_path, monkeypatch):
    # a group costs the sweep 260 KiB of its cap (read) and 4 KiB per block it rewrote:
    # ~8 s here, much longer than the write workload below takes
    monkeypatch.setenv("CARGOHOLD_ENGINE_REKEY_BANDWIDTH", "3Mi")
    yield from engines_of(cluster, tmp_path, VID, (OLD, NEW))


def read_all(uri: str, dest: Path) -> bytes:
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(dest)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest.read_bytes()


def test_rekey_rewrites_online_and_the_old_key_is_then_not_needed(engines, tmp_path):
    need("qemu-io", "qemu-img")
    want = bytearray(LOGICAL)
    e1 = engines(1, [OLD])
    assert e1.ctl(op="status")["rekey"]["state"] == "idle"
    qemu_io(
        e1.uri,
        "write -P 0x11 0 3M",
        "write -P 0x22 5124k 1M",  # not aligned to a group
        "write -z 1M 512k",  # ZERO slots inside written data
        "write -P 0x33 12M 2M",
        "flush",
    )
    want[0 : 3 * MIB] = b"\x11" * (3 * MIB)
    want[5124 * 1024 : 6148 * 1024] = b"\x22" * MIB
    want[1 * MIB : 1 * MIB + 512 * 1024] = bytes(512 * 1024)
    want[12 * MIB : 14 * MIB] = b"\x33" * (2 * MIB)

    b64 = [base64.b64encode(k).decode() for k in (NEW, OLD)]
    bad = e1.ctl(op="data-keys", keys=[b64[0]])  # the old key left out: refused, unharmed
    assert not bad["ok"] and "leaves out the newest key" in bad["error"], bad
    bad = e1.ctl(op="data-keys", keys=[b64[0], "not base64!"])
    assert not bad["ok"] and bad["type"] == "InvalidArgument", bad
    assert e1.ctl(op="status")["rekey"]["state"] == "idle"
    got = e1.ctl(op="data-keys", keys=b64)
    assert got["ok"] and got["rekey"]["state"] == "running" and got["rekey"]["keys"] == 2, got
    bad = e1.ctl(op="data-keys", keys=[b64[1], b64[0]])  # a reorder: refused
    assert not bad["ok"] and "reordered" in bad["error"], bad
    assert OLD.hex() not in str(got) and b64[0] not in str(got)

    # a write workload while it sweeps: 4 KiB writes all over the volume, no error
    cmds = [f"write -P 0x{0x40 + n % 16:02x} {n * 160}k 4k" for n in range(100)]
    qemu_io(e1.uri, *cmds, "flush")
    for n in range(100):
        want[n * 160 * 1024 : n * 160 * 1024 + 4096] = bytes([0x40 + n % 16]) * 4096
    mid = e1.ctl(op="status")["rekey"]
    assert mid["state"] == "running", f"the sweep ended before the workload did: {mid}"
    assert mid["groups_done"] < mid["groups_total"]

    # the engine stops mid-sweep; a new one (both keys again) sweeps again and finishes
    e1.stop()
    e2 = engines(2, [NEW, OLD])
    assert e2.ctl(op="status")["encryption"]["key_check"] == "ok"
    deadline = time.monotonic() + 120
    st = e2.ctl(op="status")["rekey"]
    while st["state"] != "done":
        assert st["state"] == "running", st
        assert time.monotonic() < deadline, f"the sweep did not finish: {st}"
        time.sleep(0.2)
        st = e2.ctl(op="status")["rekey"]
    assert st["groups_done"] == st["groups_total"] == LOGICAL // layout.GROUP_BYTES
    assert st["blocks_rewritten"] > 0 and st["error"] is None
    assert read_all(e2.uri, tmp_path / "back2.raw") == want
    # done: the old key may go (online); the newest may not
    assert e2.ctl(op="data-keys", keys=[b64[0]])["rekey"]["keys"] == 1
    refused = e2.ctl(op="data-keys", keys=[b64[1]])
    assert not refused["ok"] and refused["type"] == "WrongState", refused
    e2.stop()

    # only the new key: every byte as written
    e3 = engines(3, [NEW])
    assert e3.ctl(op="status")["encryption"]["key_check"] == "ok"
    assert read_all(e3.uri, tmp_path / "back3.raw") == want
    assert e3.ctl(op="status")["counters"].get("authentication_errors", 0) == 0
    e3.stop()
