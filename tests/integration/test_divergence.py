"""Issue 14, item 2: a replica whose content diverged from the others is caught — by the
comparison after every rebuild and by scrub's cross-replica comparison — repaired, and never
served, also not after the volume moves to that replica's node.

Real components: replica servers and ``cargohold engine`` as processes on loopback, qemu-io
as the NBD client. Divergence is made the two ways the issue names: a write sent straight to
one replica over the replica protocol (bypassing the engine), and an edit of one replica's
data file together with the block's checksum in its block map, so that the block passes its
own checksum. Every check compares bytes read from each replica directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import subprocess

import crc32c
import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import InvalidArgument
from cargohold.protocol.replica_wire import Op
from cargohold.replica.client import ReplicaClient
from cargohold.store import format as fmt
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.processes import ServerProc
from tests.support.replica_cluster import ReplicaCluster

SIZE = 32 * MIB
FOREIGN = b"FOREIGN!" * (BLOCK_SIZE // 8)


class Nodes(ReplicaCluster):
    """``n`` replica servers (one per "node"), one replica ``r<i>`` of the volume each."""

    def __init__(self, root, n: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(root, SIZE, n)

    def restart(self, i: int) -> ServerProc:  # a clean stop first, unlike ReplicaCluster's
        self.servers[i].stop()
        self.servers[i] = self._start(self.servers[i].disks)
        return self.servers[i]

    def contents(self, epoch: int) -> list[bytes]:
        """Every replica's whole head, read from its server (not through an engine)."""

        async def one(i: int) -> bytes:
            c = await ReplicaClient.connect("127.0.0.1", self.servers[i].port)
            try:
                await c.open(f"r{i}", epoch)
                return b"".join([bytes(await c.read(o, 8 * MIB)) for o in range(0, SIZE, 8 * MIB)])
            finally:
                await c.close()

        async def all_() -> list[bytes]:
            return [await one(i) for i in range(len(self.servers))]

        return asyncio.run(all_())

    def replica_dir(self, i: int) -> str:
        return os.path.join(self.servers[i].disks[0], "replicas", f"r{i}")

    def forge(self, i: int, block: int, data: bytes) -> None:
        """Replace a head block of replica ``i`` on disk *and* its checksums in the block map,
        so that it still passes its own checksum (what scrub alone cannot see). Works under
        a running server too: the map is a shared mapping of the same file."""
        d = self.replica_dir(i)
        with open(os.path.join(d, "replica.meta"), "rb") as f:
            meta = fmt.decode_meta(f.read(), "replica.meta")
        head = int(meta["head"])
        crc = crc32c.crc32c(data)
        with open(os.path.join(d, f"layer-{head:06d}.data"), "r+b") as f:
            f.seek(fmt.HEADER_SIZE + block * BLOCK_SIZE)
            f.write(data)
            os.fsync(f.fileno())
        with open(os.path.join(d, f"layer-{head:06d}.map"), "r+b") as f:
            f.seek(fmt.HEADER_SIZE + block * fmt.RECORD_SIZE + 8)
            (meta_word,) = struct.unpack("<Q", f.read(8) or bytes(8))
            state = (meta_word >> fmt.GEN_SHIFT << fmt.GEN_SHIFT) | fmt.DATA
            f.seek(fmt.HEADER_SIZE + block * fmt.RECORD_SIZE)
            f.write(struct.pack("<IIQ", crc, crc, state))
            os.fsync(f.fileno())

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


async def _write_around_the_engine(port: int, replica: str, epoch: int) -> None:
    """What the issue did: one write straight to one replica, at its current epoch. Without
    a generation it is refused now; with one guessed above the replica's, it is stored."""
    c = await ReplicaClient.connect("127.0.0.1", port)
    try:
        info = await c.open(replica, epoch)
        with pytest.raises(InvalidArgument, match="without a generation"):
            c.check(await c.send(Op.WRITE, 0, len(FOREIGN), FOREIGN, generation=0))
        info = await c.open(replica, epoch)  # a refused mutation stops the session's
        await c.write(0, FOREIGN, generation=info["seen"] + 1)
        await c.flush()
    finally:
        await c.close()


@pytest.fixture
def nodes(tmp_path):
    made: list[Nodes] = []

    def make(n: int) -> Nodes:
        x = Nodes(tmp_path, n)
        made.append(x)
        return x

    yield make
    for x in made:
        x.stop()


@pytest.fixture
def engines(tmp_path):
    started: list[EngineProc] = []

    def make(specs: list[str], epoch: int, local: str, *extra: str) -> EngineProc:
        e = EngineProc("vol", specs, epoch, str(tmp_path), local=local, extra=list(extra))
        started.append(e.start())
        return e

    yield make
    for e in started:
        e.stop()
    for e in started:
        assert "Traceback" not in e.output(), e.output()


def _rebuild_again(e: EngineProc, spec: str) -> dict:
    e.wait_for(lambda s: s["replicas"][1]["mode"] == "ERR", 30, "the replica to be dropped")
    assert e.ctl(op="add-replica", replica=spec)["ok"]
    return e.wait_for(lambda s: s["robustness"] == "healthy", 60, "the rebuild")


def _moved_reads_the_acknowledged_data(nodes: Nodes, engines, old: EngineProc, epoch: int) -> None:
    """The volume moves to the diverged replica's node (a new engine, a newer epoch, local
    reads from r1 first): clients read what was acknowledged, not the foreign data."""
    old.stop()
    e2 = engines(nodes.specs(), epoch, "r1")
    st = e2.ctl(op="status")
    assert [r["mode"] for r in st["replicas"]] == ["RW", "RW"], st
    qemu_io(e2.uri, "read -P 0x11 0 64k", "read -P 0x22 64k 4k", "read -P 0x11 68k 956k")


def test_a_write_around_the_engine_is_caught_by_the_rebuild_comparison(nodes, engines):
    """The issue's reproduction, through the replica protocol."""
    need("qemu-io")
    n = nodes(2)
    e = engines(n.specs(), 1, "r0")
    qemu_io(e.uri, "write -P 0x11 0 1M", "flush")
    asyncio.run(_write_around_the_engine(n.servers[1].port, "r1", 1))
    # the engine's next write collides with the foreign generation: r1 is dropped, then
    # rebuilt by a delta from its generation, which does not cover block 0
    qemu_io(e.uri, "write -P 0x22 64k 4k", "flush")
    st = _rebuild_again(e, n.spec(1))
    a, b = n.contents(1)
    assert a == b, "the rebuilt replica differs from its source"
    rb = st["replicas"][1]["rebuild"]
    assert rb["since"] > 0 and not rb["full"], rb  # a delta rebuild
    assert rb["diverged_blocks"] == 2, rb  # block 0 (foreign), block 16 (the missed write)
    assert st["counters"]["rebuild_diverged_blocks"] == 2
    assert a[:BLOCK_SIZE] == b"\x11" * BLOCK_SIZE and a[16 * BLOCK_SIZE : 17 * BLOCK_SIZE] == (
        b"\x22" * BLOCK_SIZE
    )
    _moved_reads_the_acknowledged_data(n, engines, e, 2)


def test_an_edit_of_the_files_with_their_checksums_is_caught_by_the_rebuild_comparison(
    nodes, engines
):
    need("qemu-io")
    n = nodes(2)
    e = engines(n.specs(), 1, "r0")
    qemu_io(e.uri, "write -P 0x11 0 1M", "flush")
    n.servers[1].kill()
    qemu_io(e.uri, "write -P 0x22 64k 4k", "flush")  # r1 misses this one
    n.forge(1, 0, FOREIGN)  # and its block 0 is replaced on disk, checksum and all
    n.forge(1, 200, FOREIGN)
    n.servers[1] = ServerProc(n.servers[1].disks).start()
    st = _rebuild_again(e, n.spec(1))
    a, b = n.contents(1)
    assert a == b, "the rebuilt replica differs from its source"
    assert a[:BLOCK_SIZE] == b"\x11" * BLOCK_SIZE
    rb = st["replicas"][1]["rebuild"]
    assert rb["since"] > 0 and rb["diverged_blocks"] == 2, rb  # block 0 and block 200
    assert rb["recopied_bytes"] > 2 * BLOCK_SIZE
    assert a[200 * BLOCK_SIZE : 201 * BLOCK_SIZE] == b"\x11" * BLOCK_SIZE
    _moved_reads_the_acknowledged_data(n, engines, e, 2)


def test_scrub_compares_replicas_and_repairs_the_diverged_one(nodes, engines):
    """Both kinds of divergence in a volume whose replicas are all RW: only a comparison
    across replicas can see them. Three replicas: the two that agree are the majority."""
    need("qemu-io")
    n = nodes(3)
    e = engines(n.specs(), 1, "r0")
    qemu_io(e.uri, "write -P 0x11 0 1M", "flush")
    n.forge(1, 3, FOREIGN)  # while everything runs
    n.forge(2, 7, FOREIGN)
    n.forge(2, 4000, FOREIGN)  # a block nobody wrote: a hole on the others
    contents = n.contents(1)
    assert len({hashlib.sha256(c).digest() for c in contents}) == 3
    rep = e.ctl(op="scrub", wait=True)["scrub"]
    assert rep["state"] == "succeeded", rep
    assert rep["found"] == 0  # every block passes its own checksum
    a, b, c = n.contents(1)
    assert a == b == c, "scrub left the replicas different"
    assert rep["compared_replicas"] == 3
    assert (rep["diverged_found"], rep["diverged_repaired"], rep["diverged_unrepaired"]) == (
        3,
        3,
        0,
    ), rep
    assert {(d["block"], d["outcome"]) for d in rep["diverged"]} == {
        (3, "repaired from r0"),
        (7, "repaired from r0"),
        (4000, "repaired from r0"),
    }
    st = e.ctl(op="status")
    assert st["counters"]["scrub_diverged_blocks"] == 3
    assert st["counters"]["scrub_diverged_repaired_blocks"] == 3
    a, b, c = n.contents(1)
    assert a == b == c and a[3 * BLOCK_SIZE : 4 * BLOCK_SIZE] == b"\x11" * BLOCK_SIZE
    assert a[4000 * BLOCK_SIZE : 4001 * BLOCK_SIZE] == bytes(BLOCK_SIZE)
    again = e.ctl(op="scrub", wait=True)["scrub"]
    assert (again["diverged_found"], again["compared_replicas"]) == (0, 3), again
    # the volume moves to r2's node: what it serves is what was written
    e.stop()
    e2 = engines(n.specs(), 2, "r2")
    qemu_io(e2.uri, "read -P 0x11 0 1M", "read -P 0 1M 31M")


def test_scrub_never_takes_a_replica_ahead_of_the_engine_as_the_source(nodes, engines):
    """The write around the engine with a guessed generation, and no engine write after it:
    that replica now has the *highest* generation. Scrub must still repair it from the
    other (the engine never issued that generation), even with two replicas."""
    need("qemu-io")
    n = nodes(2)
    e = engines(n.specs(), 1, "r0")
    qemu_io(e.uri, "write -P 0x11 0 1M", "flush")
    asyncio.run(_write_around_the_engine(n.servers[1].port, "r1", 1))
    rep = e.ctl(op="scrub", wait=True)["scrub"]
    a, b = n.contents(1)
    assert a == b and a[:BLOCK_SIZE] == b"\x11" * BLOCK_SIZE, "the foreign block won"
    assert (rep["diverged_found"], rep["diverged_repaired"]) == (1, 1), rep
    assert rep["diverged"][0]["outcome"] == "repaired from r0", rep
    assert set(rep["ahead_of_engine"]) == {"r1"}, rep
    # the engine's next write collides with the foreign generation: r1 is dropped, and the
    # rebuild (verified) makes it current again with the engine's numbering
    qemu_io(e.uri, "write -P 0x22 64k 4k", "flush")
    st = _rebuild_again(e, n.spec(1))
    assert st["replicas"][1]["rebuild"]["diverged_blocks"] == 1  # block 16, missed
    a, b = n.contents(1)
    assert a == b
    _moved_reads_the_acknowledged_data(n, engines, e, 2)


def test_scrub_reports_but_does_not_guess_between_two_equal_replicas(nodes, engines):
    need("qemu-io")
    n = nodes(2)
    e = engines(n.specs(), 1, "r0")
    qemu_io(e.uri, "write -P 0x11 0 1M", "flush")
    n.forge(1, 5, FOREIGN)
    rep = e.ctl(op="scrub", wait=True)["scrub"]
    assert (rep["diverged_found"], rep["diverged_repaired"], rep["diverged_unrepaired"]) == (
        1,
        0,
        1,
    ), rep
    (d,) = rep["diverged"]
    assert d["block"] == 5 and d["outcome"].startswith("undecidable"), d
    assert set(d["crc32c"]) == {"r0", "r1"}
    a, b = n.contents(1)
    assert a[5 * BLOCK_SIZE : 6 * BLOCK_SIZE] == b"\x11" * BLOCK_SIZE
    assert b[5 * BLOCK_SIZE : 6 * BLOCK_SIZE] == FOREIGN  # left as it was: not guessed


def test_scrub_under_live_writes_finds_no_divergence(nodes, engines, monkeypatch):
    """No false alarms under load: a write the engine sent before a comparison is in every
    replica's map when the CHECKSUMS that follows it on the same connection is answered
    (replicas apply a connection's requests in order), and what still differs is compared
    again with writes held before anything is reported. Three passes during fio."""
    need("fio")
    monkeypatch.setenv("CARGOHOLD_ENGINE_SCRUB_BANDWIDTH", "0")
    monkeypatch.setenv("CARGOHOLD_ENGINE_SCRUB_WINDOW", str(MIB))
    n = nodes(2)
    e = engines(n.specs(), 1, "r0")
    fio = subprocess.Popen(
        [
            "fio",
            "--name=v",
            "--ioengine=nbd",
            f"--uri={e.uri}",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            f"--size={SIZE}",
            "--time_based",
            "--runtime=8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        e.wait_for(lambda s: s["generation"] > 500, 30, "fio's writes to flow")
        passes = []
        while fio.poll() is None and len(passes) < 3:
            passes.append(e.ctl(op="scrub", wait=True)["scrub"])
        out, _ = fio.communicate(timeout=60)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0 and "err= 0" in out, out
    assert passes, "no scrub pass ran while fio wrote"
    for rep in passes:
        assert rep["state"] == "succeeded", rep
        assert rep["compared_replicas"] == 2, rep
        assert rep["diverged_found"] == 0, rep
    a, b = n.contents(1)
    assert a == b
