"""What the node agent needs of ``cargohold engine``, with real processes and real clients:

- ``--require EPOCH:GEN`` refuses to start from replicas older than what the manager
  recorded (invariant 4) and starts from current ones;
- ``status`` names the NBD endpoint the engine really listens on (``--listen HOST:0``), and
  nbdinfo and qemu-io reach it there;
- the ``import`` op clones a snapshot of another volume while that volume's own engine keeps
  serving writes, unfenced — also when the source gets a new engine mid-copy — and the clone
  reads back byte for byte as the snapshot (sha256 of nbdcopy reads); bad arguments get
  clear errors and the engine goes on.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.probe.engine_support import DelayProxy
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.processes import ROOT
from tests.support.replica_cluster import ReplicaServers

MIB = 1 << 20
SIZE = 64 * MIB


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def nbd_sha256(uri: str, workdir: Path) -> str:
    """The whole export copied out by nbdcopy (a libnbd client), hashed."""
    out = workdir / f"copy-{time.monotonic_ns()}.raw"
    run("nbdcopy", uri, str(out))
    h = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    out.unlink()
    return h.hexdigest()


def pattern_file(path: Path, size: int) -> str:
    """Random data with a zeroed quarter and a repeated tail, so the copy has data, zero
    and hole extents; -> its sha256."""
    data = bytearray(os.urandom(size))
    data[size // 4 : size // 2] = bytes(size // 4)
    data[size - MIB :] = b"\x5a" * MIB
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


class Nodes(ReplicaServers):
    """Three replica servers; each volume gets one replica on each: ``<volume>-r<i>``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 3)

    def create(self, volume: str, size: int = SIZE) -> list[str]:
        for i in range(len(self.servers)):
            self.create_replica(i, f"{volume}-r{i}", size)
        return self.specs(volume)

    def specs(self, volume: str, which: tuple[int, ...] = (0, 1, 2)) -> list[str]:
        return [f"{volume}-r{i}@127.0.0.1:{self.servers[i].port}" for i in which]

    def digests(self, volume: str, epoch: int) -> set[str]:
        """SHA-256 of each replica's content read straight from its server."""
        return {self.digest(i, f"{volume}-r{i}", epoch) for i in range(3)}


@pytest.fixture
def nodes(tmp_path):
    n = Nodes(tmp_path)
    yield n
    n.stop()


@pytest.fixture
def engines(tmp_path):
    started: list[EngineProc] = []

    def make(volume: str, specs: list[str], epoch: int, *extra: str) -> EngineProc:
        local = specs[0].split("@", 1)[0]
        e = EngineProc(volume, specs, epoch, str(tmp_path), local=local, extra=list(extra))
        started.append(e.start())
        return e

    yield make
    for e in started:
        e.stop()
    for e in started:  # nothing went wrong unseen
        assert "Traceback" not in e.output() and "Logging error" not in e.output(), e.output()


def engine_refused(volume: str, specs: list[str], epoch: int, *extra: str) -> str:
    """Run an engine that must not start: -> its output (it exited non-zero)."""
    cmd = [sys.executable, "-m", "cargohold", "engine", "--volume", volume]
    cmd += ["--epoch", str(epoch), "--listen", "127.0.0.1:0", "--plaintext", *extra]
    for s in specs:
        cmd += ["--replica", s]
    env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="400")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "nbd server listening" not in out, out
    return " ".join(out.split())


def wait_import(e: EngineProc, timeout: float = 120) -> dict:  # type: ignore[type-arg]
    st = e.wait_for(
        lambda s: s["import"] and s["import"]["state"] != "running", timeout, "the import"
    )
    return st["import"]


# --- --require -------------------------------------------------------------------------------
def test_require_refuses_stale_replicas_and_accepts_current_ones(nodes, engines, tmp_path):
    need("qemu-io")
    specs = nodes.create("vol")
    e1 = engines("vol", specs, 1)
    qemu_io(e1.uri, "write -P 0x41 0 4M", "flush")
    st = e1.ctl(op="status")
    assert (st["current_epoch"], st["current_generation"]) == (1, 1)
    nodes.servers[2].kill()  # vol-r2 misses what follows
    qemu_io(e1.uri, "write -P 0x42 1M 1M", "write -P 0x43 8M 1M", "flush")
    st = e1.ctl(op="status")
    current = (st["current_epoch"], st["current_generation"])
    assert current == (1, 3)  # what the manager records from the heartbeat
    e1.stop()
    nodes.restart(2)
    specs = nodes.specs("vol")

    # only the stale replica reachable (the others' servers are down): refused, and the
    # message says what each replica has
    nodes.servers[0].kill()
    out = engine_refused("vol", specs[2:], 2, "--require", "1:3")
    assert "volume vol: refusing to start: newer data exists (epoch 1, generation 3" in out, out
    assert f"{specs[2]}: epoch 1, generation 1" in out, out
    assert "would lose acknowledged writes" in out, out
    out = engine_refused("vol", specs[2:], 2, "--require", "0:3")  # the generation alone
    assert "newer data exists (generation 3 was recorded)" in out, out
    # with an unreachable replica named too
    out = engine_refused("vol", [specs[0], specs[2]], 2, "--require", "1:3")
    assert f"{specs[0]}: unreachable" in out and f"{specs[2]}: epoch 1, generation 1" in out, out
    nodes.restart(0)
    specs = nodes.specs("vol")

    # a newer epoch recorded than any replica has: refused too
    out = engine_refused("vol", specs, 3, "--require", "2:1")
    assert "epoch 2, generation 1 was recorded" in out, out
    assert "newest reachable replica is at epoch 1, generation 3" in out, out
    # a malformed --require is a usage error
    out = engine_refused("vol", specs, 3, "--require", "three")
    assert "expected EPOCH:GEN" in out, out

    # every replica: the current ones satisfy the requirement; the stale one is rebuilt
    e2 = engines("vol", specs, 4, "--require", "1:3")
    st = e2.wait_for(lambda s: s["robustness"] == "healthy", 60, "the rebuild")
    assert (st["current_epoch"], st["current_generation"]) == (1, 3)
    qemu_io(e2.uri, "read -P 0x41 0 1M", "read -P 0x42 1M 1M", "read -P 0x43 8M 1M")
    qemu_io(e2.uri, "write -P 0x44 2M 1M", "flush")
    st = e2.ctl(op="status")
    assert (st["current_epoch"], st["current_generation"]) == (4, 4)  # this engine's write
    e2.stop()
    e3 = engines("vol", specs, 5, "--require", "4:4")  # exactly current: starts
    assert e3.ctl(op="status")["robustness"] == "healthy"
    e3.stop()
    e4 = engines("vol", specs, 6, "--require", "0:4")
    assert e4.ctl(op="status")["robustness"] == "healthy"
    assert len(nodes.digests("vol", 6)) == 1


# --- status: the endpoint --------------------------------------------------------------------
def test_status_reports_the_real_endpoint_and_clients_reach_it(nodes, engines, tmp_path):
    need("qemu-io", "nbdinfo")
    e = engines("vol", nodes.create("vol"), 1, "--unix", str(tmp_path / "vol.nbd"))
    endpoint = e.ctl(op="status")["endpoint"]
    assert endpoint == f"nbd://127.0.0.1:{e.port}/vol" and e.port != 0
    info = run("nbdinfo", "--json", endpoint).stdout
    assert f'"export-size": {SIZE}' in info, info
    qemu_io(endpoint, "write -P 0x77 0 1M", "flush", "read -P 0x77 0 1M")


# --- import ---------------------------------------------------------------------------------
def test_import_clones_a_snapshot_of_a_volume_in_use(nodes, engines, tmp_path):
    need("qemu-io", "nbdcopy", "fio")
    src = engines("src", nodes.create("src"), 3)
    data = tmp_path / "data.raw"
    want = pattern_file(data, SIZE)
    run("nbdcopy", str(data), src.uri)
    assert src.ctl(op="snapshot", name="golden")["ok"]
    qemu_io(src.uri, "write -P 0x99 0 2M", "flush")  # the head moves on; the snapshot not

    dst = engines("dst", nodes.create("dst"), 1)
    # the source keeps serving a workload all along
    fio = subprocess.Popen(
        ["fio", "--name=src", "--ioengine=nbd", f"--uri={src.uri}", "--rw=randwrite",
         "--bs=4k", "--iodepth=8", "--size=16M", "--offset=32M", "--time_based",
         "--runtime=4", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
         "--verify_state_save=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        started = dst.ctl(op="import", source=nodes.specs("src")[1], snapshot="golden")
        assert started["ok"] and started["import"]["state"] == "running", started
        job = wait_import(dst)
    finally:
        out, _ = fio.communicate(timeout=120)
    assert fio.returncode == 0 and "err= 0" in out, out
    assert job["state"] == "succeeded", job
    assert job["bytes_copied"] == job["bytes_total"] == SIZE
    assert 0 < job["data_bytes"] <= SIZE * 3 // 4  # the zeroed quarter was not copied
    assert job["error"] == ""

    # the source's engine was never fenced and still owns its replicas at its epoch
    st = src.ctl(op="status")
    assert not st["fenced"] and st["robustness"] == "healthy", st
    assert {nodes.listing(i)[f"src-r{i}"]["epoch"] for i in range(3)} == {3}
    qemu_io(src.uri, "write -P 0x98 4M 1M", "read -P 0x98 4M 1M")

    # the clone reads as the snapshot, through NBD, and its replicas agree
    assert nbd_sha256(dst.uri, tmp_path) == want
    st = dst.ctl(op="status")
    assert st["generation"] > 0 and {r["generation"] for r in st["replicas"]} == {st["generation"]}
    assert len(nodes.digests("dst", 1)) == 1


def test_import_survives_a_new_source_engine_and_overwrites_old_content(nodes, engines, tmp_path):
    need("qemu-io", "nbdcopy")
    src_specs = nodes.create("src")
    src = engines("src", src_specs, 1)
    data = tmp_path / "data.raw"
    want = pattern_file(data, SIZE)
    run("nbdcopy", str(data), src.uri)
    assert src.ctl(op="snapshot", name="s1")["ok"]

    dst = engines("dst", nodes.create("dst"), 1)
    qemu_io(dst.uri, f"write -P 0xee 0 {SIZE}", "flush")  # not fresh: holes must be zeroed

    proxy = DelayProxy("127.0.0.1", nodes.servers[1].port).start()
    try:
        proxy.delay = 0.25  # each round trip with the source takes about half a second
        source = f"src-r1@127.0.0.1:{proxy.port}"
        assert dst.ctl(op="import", source=source, snapshot="s1")["ok"]
        busy = dst.ctl(op="import", source=source, snapshot="s1")
        assert not busy["ok"] and busy["type"] == "Busy", busy
        dst.wait_for(lambda s: s["import"]["bytes_copied"] > 0, 60, "the first chunk")
        # the source volume is attached anew meanwhile: a new engine, a new epoch
        src.stop()
        src2 = engines("src", src_specs, 2)
        proxy.delay = 0  # the rest may go fast: the next EXPORT meets the new epoch
        job = wait_import(dst)
        assert job["state"] == "succeeded", job
        assert "import source src-r1" in dst.output() and "new epoch; reopening" in dst.output()
    finally:
        proxy.close()
    assert not src2.ctl(op="status")["fenced"]
    assert {nodes.listing(i)[f"src-r{i}"]["epoch"] for i in range(3)} == {2}
    assert nbd_sha256(dst.uri, tmp_path) == want
    assert len(nodes.digests("dst", 1)) == 1


def test_bad_imports_get_clear_errors_and_the_engine_goes_on(nodes, engines, tmp_path):
    need("qemu-io")
    big = engines("big", nodes.create("big", SIZE + 32 * MIB), 1)
    qemu_io(big.uri, "write -P 0x31 0 1M", "flush")
    assert big.ctl(op="snapshot", name="small")["ok"]  # no data beyond SIZE yet
    qemu_io(big.uri, f"write -P 0x32 {SIZE + MIB} 1M", "flush")
    assert big.ctl(op="snapshot", name="large")["ok"]
    dst = engines("dst", nodes.create("dst"), 1)
    source = nodes.specs("big")[0]

    def refused(kind: str, text: str, **req: object) -> None:
        r = dst.ctl(op="import", **req)
        assert not r["ok"] and r["type"] == kind and text in r["error"], r

    refused("InvalidArgument", "source (ID@HOST:PORT", snapshot="small")
    refused("InvalidArgument", "expected ID@HOST:PORT", source="nonsense", snapshot="small")
    refused("InvalidArgument", "snapshot (the name", source=source)
    refused("NotFound", "no snapshot 'nope' (it has: small, large)", source=source, snapshot="nope")
    missing = f"ghost@127.0.0.1:{nodes.servers[0].port}"
    refused("NotFound", "no replica ghost", source=missing, snapshot="small")
    refused("ReplicaIOError", "cannot connect", source="x@127.0.0.1:1", snapshot="small")
    refused("InvalidArgument", "is larger than volume dst", source=source, snapshot="large")
    st = dst.ctl(op="status")
    assert st["import"]["state"] == "failed" and "larger than volume dst" in st["import"]["error"]
    assert dst.alive() and not st["fenced"]

    # a snapshot taken before its volume grew fits, and the engine imports it
    r = dst.ctl(op="import", source=source, snapshot="small")
    assert r["ok"], r
    job = wait_import(dst)
    assert job["state"] == "succeeded" and job["bytes_total"] == SIZE, job
    qemu_io(dst.uri, "read -P 0x31 0 1M", f"read -P 0 1M {SIZE - MIB}")
    assert not big.ctl(op="status")["fenced"]
    assert re.search(r"imported snapshot small of big-r0@", dst.output())
