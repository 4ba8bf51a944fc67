"""The replica server as a real process: every op over the wire, fencing, bad input."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import (
    AlreadyExists,
    Fenced,
    InvalidArgument,
    NotFound,
    NotOpen,
    ReplicaIOError,
    Unsupported,
)
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.replica.client import ReplicaClient
from cargohold.store import format as fmt
from tests.support.processes import ServerProc


async def connect(server) -> ReplicaClient:
    return await ReplicaClient.connect("127.0.0.1", server.port)


async def test_lifecycle_io_and_snapshots_over_tcp_and_unix(server):
    c = await connect(server)
    assert (await c.hello())["version"] == wire.VERSION
    await c.create("vol-a", 64 * MIB)
    with pytest.raises(AlreadyExists):
        await c.create("vol-a", 64 * MIB)
    info = await c.open("vol-a", 1)
    assert info["size"] == 64 * MIB and info["generation"] == 0
    data = os.urandom(256 * 1024)
    gen = await c.write(MIB, data, fua=True)
    assert gen == 1
    assert bytes(await c.read(MIB, len(data))) == data
    snap = await c.snapshot_create("s1", {"k": "v"})
    assert snap["name"] == "s1" and snap["generation"] == 1
    await c.write_zeroes(MIB, 8192)
    await c.trim(MIB + 8192, 8192)
    assert bytes(await c.read(MIB, 16384)) == bytes(16384)
    assert bytes(await c.read(MIB, len(data), snapshot="s1")) == data
    assert await c.changed_since(1) == [[MIB, 16384]]
    ext = await c.extents(0, 2 * MIB)
    assert [e[2] for e in ext] == [0, 2, 1, 0]
    await c.snapshot_revert("s1")
    assert bytes(await c.read(MIB, len(data))) == data
    await c.snapshot_delete("s1")
    assert await c.snapshot_list() == []
    await c.expand(128 * MIB)
    assert (await c.info())["size"] == 128 * MIB
    st = await c.stats()
    assert st["allocated_bytes"] == len(data)
    assert (await c.scrub()) == {"checked_blocks": len(data) // BLOCK_SIZE, "bad": []}

    u = await ReplicaClient.connect(unix=server.unix)
    await u.open("vol-a", 1)
    assert bytes(await u.read(MIB, len(data))) == data
    assert [r["id"] for r in await u.list()] == ["vol-a"]
    await u.close()
    await c.delete("vol-a")
    with pytest.raises(NotFound):
        await c.read(0, BLOCK_SIZE)
    await c.close()


async def test_copy_between_replicas_full_then_delta(server):
    c = await connect(server)
    for rid in ("src", "dst"):
        await c.create(rid, 32 * MIB)
    src, dst = await connect(server), await connect(server)
    await src.open("src", 1)
    await dst.open("dst", 1)
    await src.write(0, os.urandom(4 * MIB))
    await src.write(20 * MIB, os.urandom(BLOCK_SIZE))
    moved = await src.copy_to(dst, chunk=MIB)
    assert moved > 4 * MIB
    g = (await src.info())["generation"]
    await src.write(MIB, os.urandom(2 * BLOCK_SIZE))
    await src.write_zeroes(20 * MIB, BLOCK_SIZE)
    moved = await src.copy_to(dst, since=g)
    assert moved < 3 * BLOCK_SIZE + 1024  # only the delta travels
    assert bytes(await src.read(0, 32 * MIB)) == bytes(await dst.read(0, 32 * MIB))
    for x in (c, src, dst):
        await x.close()


async def test_fencing_rejects_older_epochs_also_on_open_connections(server):
    c = await connect(server)
    await c.create("f", 16 * MIB)
    old = await connect(server)
    await old.open("f", 1)
    await old.write(0, b"1" * BLOCK_SIZE)
    new = await connect(server)
    await new.open("f", 2)
    with pytest.raises(Fenced, match="epoch 1 is older than 2"):
        await old.write(BLOCK_SIZE, b"x" * BLOCK_SIZE)
    with pytest.raises(Fenced):
        await old.read(0, BLOCK_SIZE)
    with pytest.raises(Fenced):
        await old.flush()
    late = await connect(server)
    with pytest.raises(Fenced):
        await late.open("f", 1)
    # the new engine sees everything the old one had acknowledged, and nothing after
    assert bytes(await new.read(0, 2 * BLOCK_SIZE)) == b"1" * BLOCK_SIZE + bytes(BLOCK_SIZE)
    for x in (c, old, new, late):
        await x.close()


async def test_an_epoch_far_above_the_replicas_is_refused_and_does_not_fence(server):
    """Issue #14 item 4: an OPEN at epoch 2**62 used to be persisted and fence every later
    engine (whose epochs the manager counts up from 1) for ever."""
    from cargohold.constants import MAX_EPOCH_STEP

    c = await connect(server)
    await c.create("e", 16 * MIB)
    bogus = await connect(server)
    with pytest.raises(InvalidArgument, match="more than 65536 above the replica's epoch 0"):
        await bogus.open("e", 2**62)
    with pytest.raises(InvalidArgument, match="largest epoch"):
        await bogus.open("e", 2**63)
    engine = await connect(server)
    info = await engine.open("e", 2)  # the manager's next engine is not fenced
    assert info["epoch"] == 2
    await engine.write(0, b"2" * BLOCK_SIZE)
    listed = {r["id"]: r for r in await c.list()}
    assert listed["e"]["epoch"] == 2
    # a step of exactly MAX_EPOCH_STEP is fine; one more is not
    step = await connect(server)
    await step.open("e", 2 + MAX_EPOCH_STEP)
    with pytest.raises(InvalidArgument):
        await step.open("e", 3 + 2 * MAX_EPOCH_STEP)
    # the engine of a volume recovered with `volume recover-epoch` may jump
    await step.open("e", 2**62, jump=True)
    assert (await step.info())["epoch"] == 2**62
    with pytest.raises(InvalidArgument, match="jump must be true or false"):
        await step.call(Op.OPEN, args={"replica": "e", "epoch": 2**62, "jump": 1})
    for x in (c, bogus, engine, step):
        await x.close()


async def test_epoch_survives_a_restart(tmp_path):
    (tmp_path / "d").mkdir()
    s = ServerProc([str(tmp_path / "d")]).start()
    try:
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        await c.create("e", 16 * MIB)
        await c.open("e", 5)
        await c.close()
        s.kill()
        s = ServerProc([str(tmp_path / "d")]).start()
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        with pytest.raises(Fenced):
            await c.open("e", 4)
        assert (await c.open("e", 5))["epoch"] == 5
        await c.close()
    finally:
        s.stop()


async def test_a_machine_crash_is_reported_until_mark_current(tmp_path):
    """After a machine crash (another boot id in the head's header, the clean flag unset)
    OPEN and INFO report ``power_loss`` and the generation of the last completed FLUSH;
    MARK_CURRENT clears it, durably (docs/formats/replica-store.md, "Machine crashes")."""
    (tmp_path / "d").mkdir()
    s = ServerProc([str(tmp_path / "d")]).start()
    try:
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        await c.create("p", 16 * MIB)
        assert (await c.open("p", 1))["power_loss"] is False
        await c.write(0, b"1" * BLOCK_SIZE, generation=1)
        await c.flush()
        await c.write(BLOCK_SIZE, b"2" * BLOCK_SIZE, generation=2)  # never flushed
        assert (await c.info())["generation"] == 2
        s.kill()
        head = tmp_path / "d" / "replicas" / "p" / "layer-000001.map"
        with open(head, "r+b") as f:  # the machine rebooted: another kernel's boot id
            f.seek(fmt.MAP_BOOT_OFFSET)
            f.write(b"\xee" * 16)
        s = ServerProc([str(tmp_path / "d")]).start()
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        info = await c.open("p", 1)
        assert (info["power_loss"], info["generation"], info["seen"]) == (True, 1, 2)
        assert (await c.info())["power_loss"] is True
        assert await c.mark_current(2) == 2
        assert (await c.info())["power_loss"] is False
        await c.close()
        s.kill()  # a killed process now: nothing to report
        s = ServerProc([str(tmp_path / "d")]).start()
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        info = await c.open("p", 1)
        assert (info["power_loss"], info["generation"]) == (False, 2)
        assert bytes(await c.read(BLOCK_SIZE, BLOCK_SIZE)) == b"2" * BLOCK_SIZE
        await c.close()
    finally:
        s.stop()


async def test_a_machine_crash_is_recovered_before_the_server_listens(tmp_path):
    """A torn block (its record after the last FLUSH, its data page another value) on a
    replica whose machine crashed: the server's start opens that replica, adopts the data
    page's value and logs it before it listens; the block then reads and verifies
    (docs/formats/replica-store.md, "Machine crashes")."""
    (tmp_path / "d").mkdir()
    s = ServerProc([str(tmp_path / "d")]).start()
    try:
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        await c.create("t", 16 * MIB)
        await c.create("u", 16 * MIB)  # not crashed: stays lazy
        await c.open("t", 1)
        await c.write(0, b"1" * BLOCK_SIZE, generation=1)
        await c.flush()
        await c.write(0, b"2" * BLOCK_SIZE, generation=2)  # never flushed
        await c.close()
        s.kill()
        rdir = tmp_path / "d" / "replicas" / "t"
        with open(rdir / "layer-000001.data", "r+b") as f:  # the data page of the flush
            f.seek(fmt.HEADER_SIZE)
            f.write(b"1" * BLOCK_SIZE)
        with open(rdir / "layer-000001.map", "r+b") as f:  # another kernel's boot id
            f.seek(fmt.MAP_BOOT_OFFSET)
            f.write(b"\xee" * 16)
        s = ServerProc([str(tmp_path / "d")]).start()
        out = s.output()
        assert "replica t: recovered from a machine crash" in out, out
        assert "1 torn blocks adopted, 0 lost" in out and "replica u" not in out, out
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        info = await c.open("t", 1)
        assert (info["power_loss"], info["generation"], info["seen"]) == (True, 1, 2)
        assert bytes(await c.read(0, BLOCK_SIZE)) == b"1" * BLOCK_SIZE
        assert (await c.scrub())["bad"] == []
        await c.close()
    finally:
        s.stop()


async def test_bad_requests_get_errors_and_the_connection_goes_on(server):
    c = await connect(server)
    with pytest.raises(NotOpen):
        await c.read(0, BLOCK_SIZE)
    await c.create("b", 16 * MIB)
    await c.open("b", 1)
    with pytest.raises(Unsupported, match="unknown op 999"):
        await c.call(999)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        await c.call(Op.SNAPSHOT_CREATE, payload=b"{{{")
    with pytest.raises(InvalidArgument, match="multiples of 4096"):
        await c.write(100, b"x" * BLOCK_SIZE)
    with pytest.raises(InvalidArgument, match="beyond the size"):
        await c.read(16 * MIB, BLOCK_SIZE)
    with pytest.raises(InvalidArgument, match="bytes of payload"):
        await c.call(Op.WRITE, 0, 8192, b"x" * BLOCK_SIZE)
    with pytest.raises(InvalidArgument, match="bad replica id"):
        await c.create("../../etc", MIB)
    with pytest.raises(InvalidArgument, match="size must be an integer"):
        await c.call(Op.CREATE, args={"replica": "z", "size": "big"})
    with pytest.raises(InvalidArgument, match="extent stream"):
        await c.import_stream(b"garbage")
    with pytest.raises(InvalidArgument, match="epoch must be"):
        await c.call(Op.OPEN, args={"replica": "b", "epoch": -1})
    assert bytes(await c.read(0, BLOCK_SIZE)) == bytes(BLOCK_SIZE)  # still fine
    await c.close()


async def test_malformed_frame_closes_only_that_connection(server):
    good = await connect(server)
    await good.create("m", 16 * MIB)
    await good.open("m", 1)
    await good.write(0, b"g" * BLOCK_SIZE)
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(b"GARBAGE!" * 8)
    raw.settimeout(10)
    assert raw.recv(100) == b""  # closed by the server
    raw.close()
    # an oversized payload header is refused before any buffering
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.sendall(wire.REQUEST.pack(wire.REQUEST_MAGIC, Op.WRITE, 0, 1, 0, 0, 2**31, 0))
    raw.settimeout(10)
    assert raw.recv(100) == b""
    raw.close()
    assert bytes(await good.read(0, BLOCK_SIZE)) == b"g" * BLOCK_SIZE
    await good.close()


async def test_many_requests_in_flight_on_one_connection(server):
    c = await connect(server)
    await c.create("p", 64 * MIB)
    await c.open("p", 1)
    futs = [
        c.send(
            Op.WRITE,
            i * BLOCK_SIZE,
            BLOCK_SIZE,
            bytes([i % 256]) * BLOCK_SIZE,
            generation=c.number(),
        )
        for i in range(2000)
    ]
    replies = await asyncio.gather(*futs)
    assert all(r.status == 0 for r in replies)
    assert sorted(r.generation for r in replies) == list(range(1, 2001))
    data = bytes(await c.read(0, 2000 * BLOCK_SIZE))
    assert all(data[i * BLOCK_SIZE] == i % 256 for i in range(2000))
    await c.close()


async def test_a_client_that_vanishes_mid_frame_does_not_hurt_others(server):
    c = await connect(server)
    await c.create("v", 16 * MIB)
    await c.open("v", 1)
    raw = socket.create_connection(("127.0.0.1", server.port))
    hdr = wire.REQUEST.pack(wire.REQUEST_MAGIC, Op.WRITE, 0, 1, 0, MIB, MIB, 0)
    raw.sendall(hdr + b"x" * 1000)
    raw.close()
    await c.write(0, b"ok" * 2048)
    assert bytes(await c.read(0, BLOCK_SIZE)) == b"ok" * 2048
    await c.close()


async def test_wrongly_typed_arguments_are_bad_requests(server):
    c = await connect(server)
    await c.create("t", 16 * MIB)
    await c.open("t", 1)
    with pytest.raises(Unsupported, match="protocol version"):
        await c.call(Op.HELLO, args={"version": [1]})
    for op, args, msg in [
        (Op.SNAPSHOT_CREATE, {"name": "a", "labels": "x"}, "labels must be"),
        (Op.SNAPSHOT_CREATE, {"name": 5}, "bad snapshot name"),
        (Op.READ, {"snapshot": 3}, "snapshot must be a string"),
        (Op.CHANGED, {"since": "yesterday"}, "since must be"),
        (Op.EXPAND, {"size": True}, "size must be"),
        (Op.EXPORT, {"max_bytes": -1}, "max_bytes must be"),
        (Op.EXPAND, {"size": 2**62}, "exceeds the largest volume"),
        (Op.CREATE, {"replica": "big", "size": 2**62}, "exceeds the largest volume"),
    ]:
        with pytest.raises(InvalidArgument, match=msg):
            await c.call(op, 0, BLOCK_SIZE if op == Op.READ else 0, args=args)
    assert "Traceback" not in server.output()
    await c.close()


async def test_engine_numbered_generations_gap_rebuild_and_mark_current(server):
    """The engine numbers the volume's mutations; a replica that misses one keeps its
    generation at the gap (it is not complete through anything later) until a delta rebuild
    from a complete replica and MARK_CURRENT."""
    c = await connect(server)
    for rid in ("ga", "gb"):
        await c.create(rid, 16 * MIB)
    a, b = await connect(server), await connect(server)
    await a.open("ga", 1)
    await b.open("gb", 1)
    for g in (1, 2, 3):  # both get 1..3
        blk = bytes([g]) * BLOCK_SIZE
        assert await a.write(g * BLOCK_SIZE, blk, generation=g) == g
        assert await b.write(g * BLOCK_SIZE, blk, generation=g) == g
    await a.write(10 * BLOCK_SIZE, b"4" * BLOCK_SIZE, generation=4)  # b misses 4
    assert await a.write(11 * BLOCK_SIZE, b"5" * BLOCK_SIZE, generation=5) == 5
    assert await b.write(11 * BLOCK_SIZE, b"5" * BLOCK_SIZE, generation=5) == 3  # a gap
    info = await b.info()
    assert (info["generation"], info["seen"]) == (3, 5)
    with pytest.raises(InvalidArgument, match="not above the newest"):
        await b.write(0, bytes(BLOCK_SIZE), generation=5)  # replayed or stale: refused
    with pytest.raises(ReplicaIOError, match="not applied"):  # and the session's mutations
        await b.write(0, bytes(BLOCK_SIZE), generation=6)  # stop until it is opened again
    await b.open("gb", 1)
    # rebuild: what changed on the complete replica after b's generation, then mark current
    assert await a.changed_since(3) == [[10 * BLOCK_SIZE, 2 * BLOCK_SIZE]]
    await a.copy_to(b, since=3)
    assert (await b.info())["generation"] == 3  # imports are history, not completeness
    assert await b.mark_current(5) == 5
    assert bytes(await a.read(0, 16 * BLOCK_SIZE)) == bytes(await b.read(0, 16 * BLOCK_SIZE))
    assert await b.write(0, b"6" * BLOCK_SIZE, generation=6) == 6  # contiguous again
    for x in (a, b, c):
        await x.close()


async def test_mutations_without_the_engines_generation_are_refused(server):
    """Issue 14: a write that bypasses the engine (generation 0) must not advance the
    replica's generation: refused, nothing stored, the replica still serves."""
    c = await connect(server)
    await c.create("g0", 16 * MIB)
    await c.open("g0", 1)
    await c.write(0, b"a" * BLOCK_SIZE, generation=1)
    for op, off, ln, payload, args in (
        (Op.WRITE, 0, BLOCK_SIZE, b"x" * BLOCK_SIZE, None),
        (Op.TRIM, 0, BLOCK_SIZE, b"", None),
        (Op.WRITE_ZEROES, 0, BLOCK_SIZE, b"", None),
        (Op.SNAPSHOT_REVERT, 0, 0, b"", {"name": "none"}),
    ):
        with pytest.raises(InvalidArgument, match="without a generation"):  # send: no numbering
            c.check(await c.send(op, off, ln, payload, args=args, generation=0))
        await c.open("g0", 1)  # a failed mutation stops the session's: opened again
    info = await c.info()
    assert (info["generation"], info["seen"]) == (1, 1)
    assert bytes(await c.read(0, BLOCK_SIZE)) == b"a" * BLOCK_SIZE
    with pytest.raises(InvalidArgument, match="not above"):  # a number already used
        await c.write(0, b"y" * BLOCK_SIZE, generation=1)
    assert (await c.stats())["generation"] == 1
    await c.close()
    # the server says so, once for the connection (not once per request)
    deadline = asyncio.get_running_loop().time() + 10
    while "without a generation" not in server.output():
        assert asyncio.get_running_loop().time() < deadline, server.output()
        await asyncio.sleep(0.05)
    assert server.output().count("refusing WRITE without a generation") == 1, server.output()
    assert server.output().count("without a generation from") == 1, server.output()


async def test_checksums_over_the_wire_match_the_data(server):
    from cargohold.store.base import block_crcs, window_digests

    c = await connect(server)
    await c.create("ck", 64 * MIB)
    await c.open("ck", 1)
    data = os.urandom(40 * BLOCK_SIZE)
    await c.write(4 * MIB, data)
    await c.snapshot_create("s")
    await c.write_zeroes(4 * MIB, 8 * BLOCK_SIZE)
    want = block_crcs(bytes(await c.read(0, 8 * MIB)))
    got = await c.checksums(0, 8 * MIB)
    assert (got.lba, got.count, got.digest_blocks) == (0, 2048, 0)
    assert got.as_list() == want.tolist()
    snap = await c.checksums(4 * MIB, 40 * BLOCK_SIZE, snapshot="s")
    assert snap.lba == 1024 and snap.as_list() == block_crcs(data).tolist()
    dig = await c.checksums(0, 8 * MIB, digest_blocks=300)
    assert dig.as_list() == window_digests(want, 300).tolist()
    for bad in ((0, 0), (1, BLOCK_SIZE), (0, (wire.MAX_CHECKSUM_BLOCKS + 1) * BLOCK_SIZE)):
        with pytest.raises(InvalidArgument):
            await c.checksums(*bad)
    with pytest.raises(NotFound):
        await c.checksums(0, BLOCK_SIZE, snapshot="nope")
    assert bytes(await c.read(4 * MIB + 8 * BLOCK_SIZE, BLOCK_SIZE)) == data[8 * 4096 : 9 * 4096]
    await c.close()
