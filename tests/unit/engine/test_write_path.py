"""The replicated write path read as a whole (docs/engine.md, "What the engine guarantees"):
a volume whose replicas are real ``ReplicaClient`` codecs over transports that record what
is sent, answered by hand with the replies a replica server gives, so every case below
drives the batching, the fan-out's judging and the NBD frontend's callbacks together:

- a WRITE_BATCH whose k-th write fails on one replica (the server refuses the rest): that
  replica is dropped once, counted once, never credited with a write from k on, and each
  write is answered by what the others stored (invariant 1);
- a connection lost with writes batched but not sealed, or sealed but not written: every
  write's answer fails, the replica is dropped and counted once;
- a FLUSH, TRIM or WRITE_ZEROES started while writes are batched goes after them on every
  replica, and a FLUSH is answered only when every replica of the write set flushed;
- Fenced in the middle: nothing after it is acknowledged;
- a mutation released by one hold never runs inside the next one (snapshots, the end of a
  rebuild, scrub's settling: every replica at one point);
- an answer that cannot be judged (a malformed error body) drops its replica and the write
  is still answered: no NBD request hangs, no hold waits for ever.

The same path against real replica servers: tests/integration/test_engine.py,
tests/probe/test_engine_faults.py."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.errors import Fenced, NoSpace, ReplicaIOError, RequestError, error_for_status
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import STATUS_OK, Op, Reply
from cargohold.replica.client import ReplicaClient, _ClientProtocol
from cargohold.settings import EngineSettings
from cargohold.store.memory_store import MemoryStore
from tests.support.done_recorder import Done
from tests.unit.engine.test_fanout import MemReplica
from tests.unit.engine.test_interface import _until, volume

BLOCK = memoryview(b"w" * 4096)
FULL = b'{"error":"disk full","type":"NoSpace","detail":{}}'
STOPPED = b'{"error":"mutation refused, not applied","type":"ReplicaIOError","detail":{}}'
FENCED = b'{"error":"a newer engine owns it","type":"Fenced","detail":{"epoch":3}}'


class Wire:
    """A transport that records what the client writes, for a replica answered by hand."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.closed = False
        self.decoder = wire.RequestDecoder()
        self.requests: list[wire.Request] = []

    def writelines(self, bufs: Any) -> None:
        data = b"".join(bytes(b) for b in bufs)
        self.calls.append([data])
        self.requests += self.decoder.feed(data)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def replicas(n: int, min_replicas: int = 1) -> tuple[Volume, list[ReplicaClient], list[Wire]]:
    """A volume of ``n`` RW replicas, each a batching client that stops a session at a
    failed mutation (a server of this release), over a recording transport."""
    clients, wires = [], []
    for _ in range(n):
        proto = _ClientProtocol()
        t = Wire()
        proto.connection_made(t)  # type: ignore[arg-type]
        c = ReplicaClient(proto, "test")
        c.batching = c.stop_on_failure = True
        clients.append(c)
        wires.append(t)
    vol = volume(*[MemReplica() for _ in range(n)])
    for link, c in zip(vol.links, clients, strict=True):
        link.client = c
    vol.settings = vol.fanout.settings = dataclasses.replace(
        vol.settings, min_replicas=min_replicas
    )
    return vol, clients, wires


def answer(c: ReplicaClient, req: wire.Request, results: list[tuple[int, int, bytes]]) -> None:
    """The server's reply to a WRITE_BATCH: per write (status, generation, error body)."""
    parts = wire.encode_reply_parts(req.id, 1, wire.encode_batch_results(results))
    c._p.data_received(b"".join(bytes(b) for b in parts))


def reply(
    c: ReplicaClient, req: wire.Request, status: int = 0, gen: int = 0, body: bytes = b""
) -> None:
    c._p.data_received(b"".join(bytes(b) for b in wire.encode_reply(req.id, status, gen, body)))


def start_writes(vol: Volume, n: int) -> list[Done]:
    """``n`` aligned NBD writes started without a task in one pass (blocks 0..n-1)."""
    dones = [Done() for _ in range(n)]
    for k, d in enumerate(dones):
        assert vol.write_nowait(k * 4096, BLOCK, False, d)
    return dones


async def one_batch(clients: list[ReplicaClient], wires: list[Wire]) -> list[wire.Request]:
    """The end of the pass: each replica got one WRITE_BATCH. -> each one's request."""
    for c in clients:
        c._p._concurrent = True  # as after a batch of several: the first waits too
    await asyncio.sleep(0)
    out = []
    for t in wires:
        [req] = t.requests
        assert req.op == Op.WRITE_BATCH
        out.append(req)
    return out


# --- 1. a WRITE_BATCH whose k-th write fails on one replica --------------------------------
@pytest.mark.parametrize("min_replicas", [1, 2])
async def test_a_batch_failing_at_its_kth_write_drops_that_replica_once(min_replicas: int) -> None:
    vol, clients, wires = replicas(2, min_replicas)
    for c in clients:
        c._p._concurrent = True
    dones = start_writes(vol, 4)
    reqs = await one_batch(clients, wires)
    assert [(w.offset, w.generation) for w in wire.decode_write_batch(reqs[0].payload)] == [
        (0, 1), (4096, 2), (8192, 3), (12288, 4),
    ]  # fmt: skip
    # r1: the first stored, the second failed (disk full), the rest refused, not applied
    answer(clients[1], reqs[1], [(0, 1, b""), (28, 1, FULL), (5, 1, STOPPED), (5, 1, STOPPED)])
    await asyncio.sleep(0.01)
    assert all(d.calls == [] for d in dones)  # r0 has not answered: nothing acknowledged
    answer(clients[0], reqs[0], [(0, g, b"") for g in (1, 2, 3, 4)])
    got = [await d.wait() for d in dones]
    assert got[0] is None
    if min_replicas == 1:  # r0 holds them all: every write stands
        assert got[1:] == [None, None, None]
    else:  # from the failed one on, only r0 holds them: none is acknowledged
        assert all(
            isinstance(e, ReplicaIOError) and "1 replicas, 2 needed" in str(e) for e in got[1:]
        )
    r0, r1 = vol.links
    assert (r0.mode, r0.generation) == (Mode.RW, 4)
    assert r1.mode is Mode.ERR and "disk full" in r1.error and r1.generation == 1
    assert wires[1].closed  # nothing more reaches it
    assert vol.counters["replica_errors"] == 1  # one replica lost: one error
    assert vol.current() == (1, 4) and vol._inflight == 0


# --- 2. a connection lost with writes batched, not sealed or not written ---------------------
async def test_a_connection_lost_under_a_batch_fails_every_write_on_it_and_counts_once() -> None:
    vol, clients, wires = replicas(2, min_replicas=2)
    for c in clients:
        c._p._concurrent = True
    dones = start_writes(vol, 3)  # batched on both, not sealed yet
    assert clients[1]._p._batch and not wires[1].calls
    wires[1].closed = True  # the transport is gone
    clients[1]._p.connection_lost(ConnectionResetError("reset"))  # before the pass ends
    await asyncio.sleep(0)
    [req] = wires[0].requests
    answer(clients[0], req, [(0, g, b"") for g in (1, 2, 3)])
    got = [await d.wait() for d in dones]
    assert all(isinstance(e, ReplicaIOError) and "1 replicas, 2 needed" in str(e) for e in got)
    assert vol.links[1].mode is Mode.ERR and "connection" in vol.links[1].error
    assert vol.counters["replica_errors"] == 1 and vol.counters["written_bytes"] == 0
    # sealed in the send queue but not written: the same
    vol, clients, wires = replicas(2, min_replicas=1)
    for c in clients:
        c._p._concurrent = True
    dones = start_writes(vol, 2)
    clients[1]._p._seal()  # in _out, waiting for the end of the pass
    wires[1].closed = True
    clients[1]._p.connection_lost(None)
    await asyncio.sleep(0)
    [req] = wires[0].requests
    answer(clients[0], req, [(0, g, b"") for g in (1, 2)])
    assert [await d.wait() for d in dones] == [None, None]  # r0 stored both: enough
    assert wires[1].calls == [] and vol.links[1].mode is Mode.ERR
    assert vol.counters["replica_errors"] == 1
    assert vol.current() == (1, 2)


# --- 3. a FLUSH, TRIM or WRITE_ZEROES behind batched writes --------------------------------------
async def test_requests_started_behind_batched_writes_go_after_them_on_every_replica() -> None:
    vol, clients, wires = replicas(3)
    for c in clients:
        c._p._concurrent = True
    loop = asyncio.get_running_loop()
    dones: list[Done] = []
    # the writes start in the pass in which the other requests' tasks take their first
    # step: those are queued while the writes are batched, not sealed
    loop.call_soon(lambda: dones.extend(start_writes(vol, 2)))
    trim = loop.create_task(vol.trim(65536, 4096))
    zeroes = loop.create_task(vol.write_zeroes(131072, 4096, False))
    await _until(lambda: all(len(t.requests) == 3 for t in wires))
    for t in wires:
        assert len(t.calls) == 1  # one system call per replica, in this order
        assert [(r.op, r.generation) for r in t.requests] == [
            (Op.WRITE_BATCH, 0), (Op.TRIM, 3), (Op.WRITE_ZEROES, 4),
        ]  # fmt: skip
    for c, t in zip(clients, wires, strict=True):
        batch, tr, wz = t.requests
        answer(c, batch, [(0, 1, b""), (0, 2, b"")])
        reply(c, tr, gen=3)
        reply(c, wz, gen=4)
    assert [await d.wait() for d in dones] == [None, None]
    await trim
    await zeroes
    # a FLUSH started while writes are batched goes after them; it covers every write
    # acknowledged before it, and is answered only when every replica flushed
    more: list[Done] = []
    loop.call_soon(lambda: more.extend(start_writes(vol, 2)))
    flush = loop.create_task(vol.flush())
    await _until(lambda: all(len(t.requests) == 5 for t in wires))
    for c, t in zip(clients, wires, strict=True):
        assert [r.op for r in t.requests[3:]] == [Op.WRITE_BATCH, Op.FLUSH]
        answer(c, t.requests[3], [(0, 5, b""), (0, 6, b"")])
    assert [await d.wait() for d in more] == [None, None]
    for c, t in zip(clients[:2], wires[:2], strict=True):
        reply(c, t.requests[4], gen=6)
    await asyncio.sleep(0.01)
    assert not flush.done()  # one replica has not flushed yet (invariant 1)
    reply(clients[2], wires[2].requests[4], gen=6)
    await asyncio.wait_for(flush, 5)
    assert [lk.generation for lk in vol.links] == [6, 6, 6]
    # a replica whose FLUSH fails is dropped; below min_replicas the FLUSH fails
    vol.settings = vol.fanout.settings = dataclasses.replace(vol.settings, min_replicas=3)
    flush = loop.create_task(vol.flush())
    await _until(lambda: all(len(t.requests) == 6 for t in wires))
    for c, t in zip(clients[:2], wires[:2], strict=True):
        reply(c, t.requests[5], gen=6)
    reply(clients[2], wires[2].requests[5], status=5, body=b'{"error":"fdatasync: EIO"}')
    with pytest.raises(ReplicaIOError, match="flush done on 2 replicas, 3 needed"):
        await asyncio.wait_for(flush, 5)
    assert vol.links[2].mode is Mode.ERR and vol.counters["replica_errors"] == 1


# --- 6. Fenced in the middle of a batch ------------------------------------------------------
async def test_fenced_mid_batch_acknowledges_nothing_after_it() -> None:
    vol, clients, wires = replicas(2)
    for c in clients:
        c._p._concurrent = True
    first = start_writes(vol, 2)
    reqs = await one_batch(clients, wires)
    for c, req in zip(clients, reqs, strict=True):
        answer(c, req, [(0, 1, b""), (0, 2, b"")])
    assert [await d.wait() for d in first] == [None, None]
    # a newer engine opened r1: its next batch is refused whole (checked once per batch)
    second = [Done() for _ in range(2)]
    for k, d in enumerate(second):
        assert vol.write_nowait(k * 4096, BLOCK, False, d)
    await asyncio.sleep(0)
    reply(clients[1], wires[1].requests[1], status=Fenced.status, body=FENCED)
    answer(clients[0], wires[0].requests[1], [(0, 3, b""), (0, 4, b"")])
    got = [await d.wait() for d in second]
    assert all(isinstance(e, Fenced) for e in got)  # r0 stored them: no matter
    assert vol.fenced and vol.robustness() == "faulted"
    assert not vol.write_nowait(0, BLOCK, False, Done())  # nothing starts any more
    with pytest.raises(Fenced):
        await vol.flush()
    assert vol.counters["replica_errors"] == 0  # not a replica's fault


# --- holds: a mutation released by one hold waits for the next -------------------------------
async def test_a_mutation_woken_by_the_end_of_a_hold_waits_for_the_next_hold() -> None:
    r = MemReplica()
    vol = volume(r)
    loop = asyncio.get_running_loop()
    leave1, inside2, leave2 = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with vol.hold():
            await leave1.wait()

    async def second() -> None:
        async with vol.hold():
            inside2.set()
            await leave2.wait()

    h1 = loop.create_task(first())
    await asyncio.sleep(0)
    h2 = loop.create_task(second())  # waits for the first hold to end
    await asyncio.sleep(0)
    trim = loop.create_task(vol.trim(0, 4096))  # waits too, behind it
    await asyncio.sleep(0)
    leave1.set()  # wakes both: the second hold takes over first
    await asyncio.wait_for(inside2.wait(), 5)
    await asyncio.sleep(0.02)
    assert r.got == []  # not inside the second hold (a snapshot at one point everywhere)
    leave2.set()
    await asyncio.wait_for(asyncio.gather(h1, h2, trim), 5)
    assert r.got == [(Op.TRIM, 0, 1)]


async def test_a_mutation_that_waited_for_a_rebuild_window_waits_for_a_hold_begun_meanwhile() -> (
    None
):
    r = MemReplica()
    vol = volume(r)
    loop = asyncio.get_running_loop()
    vol.window(0, 8192)  # a rebuild step copies this range
    trim = loop.create_task(vol.trim(0, 4096))
    await asyncio.sleep(0)
    inside, leave = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with vol.hold():  # scrub settling a window, say: nothing in flight
            inside.set()
            await leave.wait()

    held = loop.create_task(holder())
    await asyncio.wait_for(inside.wait(), 5)
    vol.window_done()
    await asyncio.sleep(0.02)
    assert r.got == []  # held
    leave.set()
    await asyncio.wait_for(asyncio.gather(held, trim), 5)
    assert r.got == [(Op.TRIM, 0, 1)] and vol.counters["window_waits"] == 1


# --- 8. an answer that cannot be judged --------------------------------------------------------
async def test_an_error_body_that_is_not_what_the_wire_says_is_a_request_error() -> None:
    _, clients, _ = replicas(1)
    for body in (b'{"error":"x","detail":[1,2]}', b'{"error":"x","detail":"no"}', b"[1]"):
        with pytest.raises(RequestError):
            clients[0].check(Reply(NoSpace.status, 1, 0, body))


async def test_an_answer_that_cannot_be_judged_drops_the_replica_and_answers_the_write() -> None:
    class Odd(MemReplica):
        def check(self, reply: Reply) -> Reply:
            raise TypeError("a bug in judging this answer")

    vol = volume(MemReplica(), Odd())
    done = Done()
    assert vol.write_nowait(0, BLOCK, False, done)
    assert await done.wait() is None  # r0 stored it; r1's answer is not trusted
    assert vol.links[1].mode is Mode.ERR and "TypeError" in vol.links[1].error
    assert vol._inflight == 0  # a hold would not wait for ever
    vol2 = volume(*[Odd(status=STATUS_OK) for _ in range(1)])
    for lk in vol2.links:
        lk.client.stop_on_failure = True  # type: ignore[union-attr]
    failed = Done()
    assert vol2.write_ordered_nowait([(0, BLOCK)], lambda _: [(0, BLOCK)], failed)
    assert isinstance(await failed.wait(), ReplicaIOError)
    assert vol2._inflight == 0
    await _until(lambda: vol2.links[0].mode is Mode.ERR)


# --- 5. a replica that never answers -------------------------------------------------------------
async def test_a_late_answer_after_the_timeout_changes_nothing() -> None:
    vol, clients, wires = replicas(2)
    vol.settings = vol.fanout.settings = dataclasses.replace(vol.settings, replica_timeout=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for c in clients:
        c._p._concurrent = True
    dones = start_writes(vol, 2)
    reqs = await one_batch(clients, wires)
    answer(clients[0], reqs[0], [(0, 1, b""), (0, 2, b"")])
    assert [await d.wait() for d in dones] == [None, None]  # r0 stored both: enough
    took = loop.time() - t0
    assert 0.2 <= took < 0.2 + 0.2 / 64 + 0.3, took  # the timeout and at most its slice
    r1 = vol.links[1]
    assert r1.mode is Mode.ERR and r1.error == "TimeoutError" and wires[1].closed
    assert not vol.fanout.deadlines.cohort  # nothing of the finished writes is kept
    # r1's answer comes after all: the writes were judged, nothing changes
    answer(clients[1], reqs[1], [(0, 1, b""), (0, 2, b"")])
    await asyncio.sleep(0.02)
    assert [d.calls for d in dones] == [[None], [None]]
    assert (r1.mode, r1.generation, r1.client) == (Mode.ERR, 0, None)
    assert vol.counters["replica_errors"] == 1 and vol.current() == (1, 2)


# --- 7. local reads and writes without a task ---------------------------------------------------
class FakeReader:
    """The local replica's files as ``local_reads`` reads them (``store.reader``)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.closed, self.epoch = data, False, 1

    def read(self, offset: int, length: int) -> bytes:
        assert not self.closed
        return self.data[offset : offset + length]

    def changed(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


async def test_a_local_replica_that_failed_a_write_is_never_read_from_its_files_again() -> None:
    local, other = MemReplica(silent=True), MemReplica(silent=True)
    vol = volume(local, other)
    link = vol.links[0]
    link.spec = dataclasses.replace(link.spec, local=True)
    link.disk = {"path": "/nonexistent"}
    reader = FakeReader(b"o" * 8192)
    link.reader, link.reader_layout = reader, vol.local.layout  # type: ignore[assignment]
    assert vol.read_now(0, 4096) == b"o" * 4096  # from its files
    done = Done()
    assert vol.write_nowait(0, BLOCK, False, done)
    local.pending[0].set_result(Reply(NoSpace.status, 1, 0, FULL))  # not stored there
    await asyncio.sleep(0.01)
    # not acknowledged yet (the other has not answered): the old data may still be read
    assert done.calls == [] and vol.read_now(0, 4096) == b"o" * 4096
    other.pending[0].set_result(Reply(STATUS_OK, 1, 1, b""))
    assert await done.wait() is None  # acknowledged: the other one stored it ...
    assert link.mode is Mode.ERR and reader.closed  # ... and the local one is out
    assert vol.read_now(0, 4096) is None  # every read goes to a server that has it
    assert vol.readers() == [vol.links[1]]


# --- 1/4. what counts as stored: never replicas being rebuilt alone -------------------------------
async def test_a_write_stored_only_on_replicas_being_rebuilt_is_not_acknowledged() -> None:
    """r0 is current, r1 being rebuilt (WO). r0 fails a write that r1 stores: the volume
    has no current replica left, and the next engine would take r0's older content as
    current (r1's generations have a gap), so the write must not be acknowledged."""
    current, rebuilding = MemReplica(status=NoSpace.status), MemReplica()
    vol = volume(current, rebuilding)
    vol.links[1].mode = Mode.WO
    done = Done()
    assert vol.write_nowait(0, BLOCK, False, done)
    err = await done.wait()
    assert isinstance(err, ReplicaIOError) and "no current one" in str(err), err
    assert [lk.mode for lk in vol.links] == [Mode.ERR, Mode.WO] and rebuilding.got
    assert vol.robustness() == "faulted" and vol.counters["written_bytes"] == 0
    with pytest.raises(ReplicaIOError, match="no current one"):  # the awaited path too
        await vol.write(4096, BLOCK, False)
    with pytest.raises(ReplicaIOError, match="no current one"):
        await vol.flush()
    ordered = volume(MemReplica(status=NoSpace.status), MemReplica())
    ordered.links[1].mode = Mode.WO
    for lk in ordered.links:
        lk.client.stop_on_failure = True  # type: ignore[union-attr]
    with pytest.raises(ReplicaIOError, match="no current one"):
        await ordered.write_ordered([(0, BLOCK), (4096, BLOCK)])


class StoreReplica:
    """A replica server over the in-memory twin of the store (``store.memory_store``): each
    WRITE applied with the engine's generation and answered with the generation the replica
    is complete through, errors answered as the server answers them."""

    stop_on_failure = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def send(
        self, op: int, offset: int = 0, length: int = 0, payload: Any = b"", flags: int = 0,
        args: dict[str, Any] | None = None, generation: int = 0,
    ) -> asyncio.Future[Reply]:  # fmt: skip
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        try:
            assert op in (Op.WRITE, Op.FLUSH), op
            g = self.store.generation
            if op == Op.WRITE:
                g = self.store.write(offset, payload, generation=generation)
            fut.set_result(Reply(STATUS_OK, 1, g, b""))
        except RequestError as e:
            body = wire.dump_json({"error": str(e), "type": type(e).__name__})
            fut.set_result(Reply(e.status, 1, self.store.generation, body))
        return fut

    def check(self, reply: Reply) -> Reply:
        if reply.status != STATUS_OK:
            raise error_for_status(reply.status, wire.parse_json(reply.payload)["error"])
        return reply

    def close_nowait(self) -> None:
        pass

    async def close(self) -> None:
        pass


def history_of(*epochs: tuple[int, range]) -> MemoryStore:
    """A replica that took the writes numbered ``gens`` from the engine of each epoch."""
    store = MemoryStore(1 << 20)
    for epoch, gens in epochs:
        store.accept_epoch(epoch)
        for g in gens:
            store.write(0, bytes([epoch]) * 4096, generation=g)
    return store


async def test_a_reachable_forked_replica_does_not_make_the_current_ones_miss_a_generation() -> (
    None
):
    """r0 and r1 hold epoch 2's acknowledged writes 3-5; r2 stayed with a cut-off engine of
    epoch 1 that went on writing 3-10 on it alone (a fork). All three are reachable when the
    engine of epoch 3 starts: r0, r1 are current, r2 stale. Numbered past r2's 10, the first
    write reached r0 and r1 as a gap and dropped both, was acknowledged on r2 alone, and
    r2's history then said epoch 3: the next engine would have rebuilt r0 and r1 from it,
    losing epoch 2's writes."""
    stores = [history_of((1, range(1, 3)), (2, range(3, 6))) for _ in range(2)]
    stores.append(history_of((1, range(1, 11))))
    specs = [ReplicaSpec(f"r{i}", "127.0.0.1", 9000 + i) for i in range(3)]
    vol = Volume("v", specs, epoch=3, settings=EngineSettings())

    async def opened(link: Any) -> None:  # what OPEN answers (``Volume._open``)
        store = stores[int(link.spec.id[1])]
        store.accept_epoch(3)
        link.client = StoreReplica(store)
        link.generation, link.seen, link.size = store.generation, store.seen, store.size
        link.history = store.history

    async def rebuilding(
        link: Any,
    ) -> None:  # the rebuild itself: tests/unit/engine/test_rebuild.py
        await asyncio.sleep(3600)

    vol._open = opened  # type: ignore[method-assign]
    vol._rebuild = rebuilding  # type: ignore[method-assign]
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.RW, Mode.WO]
    await vol.write(8192, BLOCK, False)
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.RW, Mode.ERR]
    assert [(s.generation, s.seen) for s in stores[:2]] == [(6, 6), (6, 6)]
    assert stores[2].history == [[1, 1]]  # the fork refused it: it never says epoch 3
    assert vol.robustness() == "degraded" and vol.current() == (3, 6)
    await vol.close()
