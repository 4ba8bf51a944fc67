"""WRITE_BATCH (replica wire version 2) against real replica server processes: batched
writes land with their own generations and answers, a failed write stops the session's
mutations (the rest of its batch too) until the replica is opened again, a fenced
connection fails the whole batch, a malformed batch is refused and the connection goes on;
and the versions mix: a version-1 server serves a batching client as before, a client that
does not batch still works with a version-2 server, and an engine writing through both
kinds at once keeps every replica equal."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.errors import Fenced, InvalidArgument, NotOpen, ReplicaIOError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings
from tests.support.processes import ServerProc


async def _client(server: ServerProc, batch: bool = True) -> ReplicaClient:
    c = await ReplicaClient.connect("127.0.0.1", server.port)
    await c.negotiate(batch)
    return c


async def _counters(server: ServerProc) -> dict[str, int]:
    c = await ReplicaClient.connect("127.0.0.1", server.port)
    try:
        return (await c.listing())["server"]["counters"]
    finally:
        await c.close()


@pytest.fixture
def old_server(tmp_path, monkeypatch):
    """A server that speaks version 1 only (as before WRITE_BATCH existed)."""
    (tmp_path / "old").mkdir()
    monkeypatch.setenv("CARGOHOLD_REPLICA_WIRE_VERSION", "1")
    s = ServerProc([str(tmp_path / "old")]).start()
    monkeypatch.delenv("CARGOHOLD_REPLICA_WIRE_VERSION")
    yield s
    s.stop()


async def test_writes_of_one_pass_go_as_one_batch_each_with_its_generation(server):
    c = await _client(server)
    assert c.version == 2 and c.batching
    await c.create("vol-a", 16 * MIB)
    await c.open("vol-a", 1)
    blocks = [os.urandom(BLOCK_SIZE) for _ in range(32)]
    # a first write alone goes out at once; the 32 queued behind it share frames
    first = c.send(Op.WRITE, 0, BLOCK_SIZE, blocks[0], generation=1)
    futs = [
        c.send(Op.WRITE, (3 * i) * BLOCK_SIZE, BLOCK_SIZE, b, generation=i + 2)
        for i, b in enumerate(blocks)
    ]
    assert c.in_flight == 33
    replies = [c.check(r) for r in await asyncio.gather(first, *futs)]
    assert [r.generation for r in replies] == list(range(1, 34))
    for i, b in enumerate(blocks):
        assert bytes(await c.read(3 * i * BLOCK_SIZE, BLOCK_SIZE)) == b
    got = await _counters(server)
    assert got["write_batches"] >= 1 and got["batched_writes"] == 32
    # HELLO, CREATE, OPEN, 33 writes, 32 reads, and this LIST: writes counted one by one
    assert got["requests"] == 3 + 33 + 32 + 1
    # FUA in a batch: one flush, every write answered after it
    fl = [
        c.send(
            Op.WRITE,
            i * BLOCK_SIZE,
            BLOCK_SIZE,
            blocks[i],
            wire.FLAG_FUA * (i == 2),
            generation=34 + i,
        )
        for i in range(4)
    ]
    assert [c.check(r).generation for r in await asyncio.gather(first, *fl)][1:] == [34, 35, 36, 37]
    await c.close()


async def test_after_a_failed_write_the_session_refuses_every_mutation_until_opened_again(
    server,
):
    c = await _client(server)
    await c.create("vol-b", 16 * MIB)
    await c.open("vol-b", 1)
    await c.write(0, bytes(BLOCK_SIZE), generation=1)
    data = [os.urandom(BLOCK_SIZE) for _ in range(4)]
    futs = [
        c.send(Op.WRITE, 0, BLOCK_SIZE, data[0], generation=2),
        c.send(Op.WRITE, 4096 + 1, BLOCK_SIZE, data[1], generation=3),  # misaligned
        c.send(Op.WRITE, 2 * BLOCK_SIZE, BLOCK_SIZE, data[2], generation=4),
        c.send(Op.WRITE, 3 * BLOCK_SIZE, BLOCK_SIZE, data[3], generation=5),
    ]
    r = await asyncio.gather(*futs)
    assert c.check(r[0]).generation == 2
    with pytest.raises(InvalidArgument, match="multiples of"):
        c.check(r[1])
    for later in r[2:]:  # the rest of the batch: refused, naming the first failure
        with pytest.raises(ReplicaIOError, match=r"not applied.*offset 4097.*generation 3"):
            c.check(later)
    # and every later mutation of the session, alone or batched, until OPEN
    with pytest.raises(ReplicaIOError, match="OPEN the replica again"):
        await c.write(4 * BLOCK_SIZE, data[0], generation=6)
    with pytest.raises(ReplicaIOError, match="not applied"):
        await c.trim(0, BLOCK_SIZE, generation=7)
    with pytest.raises(ReplicaIOError, match="not applied"):
        await c.write_zeroes(0, BLOCK_SIZE, generation=8)
    assert bytes(await c.read(0, BLOCK_SIZE)) == data[0]  # reads are served
    assert bytes(await c.read(BLOCK_SIZE, 4 * BLOCK_SIZE)) == bytes(4 * BLOCK_SIZE)
    info = await c.info()
    assert info["seen"] == 2 and info["generation"] == 2  # nothing after the failure
    await c.open("vol-b", 1)  # opened again: served again
    assert await c.write(3 * BLOCK_SIZE, data[3], generation=9) == 2  # a gap: 3..8 missing
    assert bytes(await c.read(3 * BLOCK_SIZE, BLOCK_SIZE)) == data[3]
    await c.close()


async def test_a_batch_whose_first_write_fails_does_not_apply_the_second(server):
    """The encrypting engine's tag block then data, back to back: when the first fails
    (here: a generation the replica has seen), the second never lands."""
    c = await _client(server)
    await c.create("vol-e", 16 * MIB)
    await c.open("vol-e", 1)
    await c.write(0, bytes(BLOCK_SIZE), generation=5)
    c._p._concurrent = True  # both in one WRITE_BATCH frame, as under load
    tag, blk = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)
    first = c.send(Op.WRITE, 64 * BLOCK_SIZE, BLOCK_SIZE, tag, generation=5)  # seen: refused
    second = c.send(Op.WRITE, 3 * BLOCK_SIZE, BLOCK_SIZE, blk, generation=6)
    r1, r2 = await asyncio.gather(first, second)
    assert (await _counters(server))["write_batches"] >= 1
    with pytest.raises(InvalidArgument, match="not above"):
        c.check(r1)
    with pytest.raises(ReplicaIOError, match="not applied"):
        c.check(r2)
    assert bytes(await c.read(3 * BLOCK_SIZE, BLOCK_SIZE)) == bytes(BLOCK_SIZE)
    assert bytes(await c.read(64 * BLOCK_SIZE, BLOCK_SIZE)) == bytes(BLOCK_SIZE)
    assert (await c.info())["seen"] == 5
    await c.close()


async def test_a_fenced_connection_fails_every_write_of_a_batch(server):
    old = await _client(server)
    await old.create("vol-c", 16 * MIB)
    await old.open("vol-c", 1)
    await old.write(0, bytes(BLOCK_SIZE), generation=1)
    new = await _client(server)
    await new.open("vol-c", 2)
    blk = os.urandom(BLOCK_SIZE)
    futs = [old.send(Op.WRITE, i * BLOCK_SIZE, BLOCK_SIZE, blk, generation=2 + i) for i in range(3)]
    for r in await asyncio.gather(*futs):
        with pytest.raises(Fenced):
            old.check(r)
    assert bytes(await new.read(BLOCK_SIZE, BLOCK_SIZE)) == bytes(BLOCK_SIZE)
    await old.close()
    await new.close()


async def test_a_malformed_batch_is_refused_and_the_connection_goes_on(server):
    c = await _client(server)
    await c.create("vol-d", 16 * MIB)
    await c.open("vol-d", 1)
    good = b"".join(bytes(b) for b in wire.encode_write_batch(9, [(0, b"x" * 4096, 0, 1)] * 2))
    body = bytearray(good[wire.REQUEST.size :])
    body[16 + 8 : 16 + 12] = (5000).to_bytes(4, "little")  # the first write's length lies
    with pytest.raises(InvalidArgument, match=r"runs past the payload|bytes after"):
        await c.call(Op.WRITE_BATCH, payload=bytes(body))
    assert (await c.info())["generation"] == 0  # nothing of it was applied
    with pytest.raises(ReplicaIOError, match="a WRITE_BATCH failed"):  # what came after it
        await c.write(0, b"y" * 4096, generation=1)
    await c.open("vol-d", 1)  # the connection goes on: opened again, writes are served
    assert await c.write(0, b"y" * 4096, generation=1) == 1


async def test_a_version_1_server_serves_a_batching_client_with_single_writes(old_server):
    c = await _client(old_server)
    assert c.version == 1 and not c.batching
    with pytest.raises(Exception, match="version 2"):
        await c.call(Op.WRITE_BATCH, payload=b"".join(
            bytes(b) for b in wire.encode_write_batch(1, [(0, bytes(4096), 0, 1)] * 2)
        )[wire.REQUEST.size :])  # fmt: skip
    await c.create("vol-e", 16 * MIB)
    await c.open("vol-e", 1)
    futs = [
        c.send(Op.WRITE, i * BLOCK_SIZE, BLOCK_SIZE, bytes([i]) * 4096, generation=i + 1)
        for i in range(8)
    ]
    assert [c.check(r).generation for r in await asyncio.gather(*futs)] == list(range(1, 9))
    assert "write_batches" not in await _counters(old_server)
    await c.close()


async def test_a_client_that_does_not_batch_works_with_a_version_2_server(server):
    c = await _client(server, batch=False)
    assert c.version == 2 and not c.batching
    await c.create("vol-f", 16 * MIB)
    await c.open("vol-f", 1)
    futs = [
        c.send(Op.WRITE, i * BLOCK_SIZE, BLOCK_SIZE, bytes([i]) * 4096, generation=i + 1)
        for i in range(8)
    ]
    assert [c.check(r).generation for r in await asyncio.gather(*futs)] == list(range(1, 9))
    assert "write_batches" not in await _counters(server)
    await c.close()


async def test_an_engine_writing_through_old_and_new_servers_keeps_replicas_equal(
    server, old_server
):
    specs = []
    for i, s in enumerate((server, old_server)):
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        await c.create(f"r{i}", 8 * MIB)
        await c.close()
        specs.append(ReplicaSpec.parse(f"r{i}@127.0.0.1:{s.port}"))
    vol = Volume("mixed", specs, 1, EngineSettings(plaintext=True, local_reads=False))
    await vol.start()
    try:
        assert [link.client.batching for link in vol.links] == [True, False]
        rnd = os.urandom(8 * MIB)

        async def write(i: int) -> None:
            off = (i * 7919 % 2048) * BLOCK_SIZE
            await vol.write(off, memoryview(rnd)[off : off + BLOCK_SIZE], fua=i % 97 == 0)

        await asyncio.gather(*(write(i) for i in range(3000)))
        await vol.write(MIB, memoryview(rnd)[: 2 * MIB], fua=False)
        await vol.flush()
        assert all(link.mode is Mode.RW for link in vol.links)
        assert {link.generation for link in vol.links} == {vol.gen}
        digests = []
        for link in vol.links:
            data = await link.client.read(0, 8 * MIB)
            digests.append(hashlib.sha256(data).hexdigest())
        assert digests[0] == digests[1]
    finally:
        await vol.close()
    assert (await _counters(server))["batched_writes"] > 0


async def test_batches_over_mutual_tls_need_an_open_replica(tmp_path, pki):
    """Over TLS the engine of the replica's volume batches like any client; the batch is
    authorized as the connection's OPEN was (a peer that opened nothing gets NotOpen)."""
    (tmp_path / "t").mkdir()
    s = ServerProc([str(tmp_path / "t")], tls_dir=pki.dir("replica", "node-1")).start()
    try:
        agent = await ReplicaClient.connect(
            "127.0.0.1", s.port, tls=pki.creds("agent", "node-1"), replica="vol-t-r1"
        )
        await agent.create("vol-t-r1", 16 * MIB, volume="vol-t")
        await agent.close()
        eng = await ReplicaClient.connect(
            "127.0.0.1", s.port, tls=pki.creds("engine", "vol-t"), replica="vol-t-r1"
        )
        assert await eng.negotiate() == 2 and eng.batching
        with pytest.raises(NotOpen):
            body = wire.encode_write_batch(1, [(0, bytes(BLOCK_SIZE), 0, 1)] * 2)
            await eng.call(Op.WRITE_BATCH, payload=b"".join(bytes(b) for b in body[1:]))
        await eng.open("vol-t-r1", 1)
        data = os.urandom(64 * BLOCK_SIZE)
        futs = [
            eng.send(
                Op.WRITE,
                i * BLOCK_SIZE,
                BLOCK_SIZE,
                data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE],
                generation=i + 1,
            )
            for i in range(64)
        ]
        assert [eng.check(r).generation for r in await asyncio.gather(*futs)] == list(range(1, 65))
        assert bytes(await eng.read(0, len(data))) == data
        await eng.close()
    finally:
        s.stop()
    assert "Traceback" not in s.output()
