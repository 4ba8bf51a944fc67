"""The replica client's write batching, against a transport that records what is written:
the writes of one pass go as one WRITE_BATCH in order with the other requests, each write's
answer comes back to its own future, and a 1 MiB payload reaches every replica's transport
as the caller's buffer itself (no copy per replica)."""

from __future__ import annotations

import asyncio

import pytest

from cargohold.errors import Fenced, ReplicaIOError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from cargohold.replica.client import ReplicaClient, _ClientProtocol


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[list] = []

    def writelines(self, bufs) -> None:
        self.calls.append(list(bufs))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return default

    def close(self) -> None:
        pass


def _client(concurrent: bool = True) -> tuple[ReplicaClient, RecordingTransport]:
    """A batching client; ``concurrent``: as after a batch of several writes (the next
    pass's first write waits for the others)."""
    proto = _ClientProtocol()
    t = RecordingTransport()
    proto.connection_made(t)  # type: ignore[arg-type]
    proto._concurrent = concurrent
    c = ReplicaClient(proto, "test")
    c.batching = True
    return c, t


async def test_a_write_alone_goes_out_at_once_and_a_busy_pass_waits_for_its_end():
    c, t = _client(concurrent=False)
    c.send(Op.WRITE, 0, 4096, bytes(4096), generation=1)
    assert len(t.calls) == 1  # queue depth 1: no added latency
    for g in (2, 3):  # something in flight: these wait for the end of the pass
        c.send(Op.WRITE, 0, 4096, bytes(4096), generation=g)
    assert len(t.calls) == 1
    await asyncio.sleep(0)
    assert [r.op for r in _requests(t)] == [Op.WRITE, Op.WRITE_BATCH]
    # after a batch of several, even the first write of a pass waits for the others
    c._p.pending.clear()
    c.send(Op.WRITE, 0, 4096, bytes(4096), generation=4)
    assert len(t.calls) == 2
    await asyncio.sleep(0)
    assert len(t.calls) == 3


def _requests(t: RecordingTransport) -> list[wire.Request]:
    dec = wire.RequestDecoder()
    return [r for call in t.calls for r in dec.feed(b"".join(bytes(b) for b in call))]


async def test_the_writes_of_one_pass_go_as_one_batch_in_order_with_other_requests():
    c, t = _client()
    w = [c.send(Op.WRITE, i * 4096, 4096, bytes([i]) * 4096, generation=i + 1) for i in range(3)]
    fl = c.send(Op.FLUSH)
    w.append(c.send(Op.WRITE, 0, 4096, b"z" * 4096, wire.FLAG_FUA, generation=4))
    assert t.calls == []  # nothing sent before the end of the pass
    await asyncio.sleep(0)
    assert len(t.calls) == 1  # one system call
    reqs = _requests(t)
    assert [r.op for r in reqs] == [Op.WRITE_BATCH, Op.FLUSH, Op.WRITE]
    batch = wire.decode_write_batch(reqs[0].payload)
    assert [(b.offset, b.generation, bytes(b.data[:1])) for b in batch] == [
        (0, 1, b"\x00"),
        (4096, 2, b"\x01"),
        (8192, 3, b"\x02"),
    ]
    assert (reqs[2].flags, reqs[2].generation) == (wire.FLAG_FUA, 4)
    assert c.in_flight == 5
    # the answers: one reply for the batch, each write's status on its own future
    body = b'{"error":"disk full","type":"NoSpace","detail":{}}'
    results = [(0, 1, b""), (28, 1, body), (0, 1, b"")]
    reply = wire.encode_reply_parts(reqs[0].id, 1, wire.encode_batch_results(results))
    c._p.data_received(b"".join(bytes(b) for b in reply))
    assert [f.result().status for f in w[:3]] == [0, 28, 0]
    assert [f.result().generation for f in w[:3]] == [1, 1, 1]
    with pytest.raises(Exception, match="disk full"):
        c.check(w[1].result())
    assert not fl.done() and c.in_flight == 2


async def test_a_frame_level_error_answers_every_write_of_the_batch():
    c, t = _client()
    w = [c.send(Op.WRITE, i * 4096, 4096, bytes(4096), generation=i + 1) for i in range(2)]
    await asyncio.sleep(0)
    [req] = _requests(t)
    err = b'{"error":"a newer engine owns it","type":"Fenced","detail":{"epoch":3}}'
    c._p.data_received(b"".join(bytes(b) for b in wire.encode_reply(req.id, 1000, 0, err)))
    for f in w:
        with pytest.raises(Fenced):
            c.check(f.result())


async def test_a_bad_batch_reply_fails_the_connection_and_its_writes():
    c, t = _client()
    t.abort = lambda: None  # type: ignore[attr-defined]
    w = [c.send(Op.WRITE, i * 4096, 4096, bytes(4096), generation=i + 1) for i in range(2)]
    await asyncio.sleep(0)
    [req] = _requests(t)
    one = wire.encode_reply_parts(req.id, 1, wire.encode_batch_results([(0, 1, b"")]))
    c._p.data_received(b"".join(bytes(b) for b in one))  # answers 1 write of 2
    for f in w:
        with pytest.raises(ReplicaIOError, match="broke the protocol"):
            f.result()
    with pytest.raises(ReplicaIOError):
        c.send(Op.WRITE, 0, 4096, bytes(4096), generation=9)


async def test_a_large_payload_reaches_every_replica_without_a_copy():
    data = memoryview(bytearray(b"\xab" * (1 << 20)))
    clients = [_client() for _ in range(3)]
    for c, _ in clients:  # as the fan-out sends one write to three replicas
        c.send(Op.WRITE, 0, len(data), data, generation=1)
        c.send(Op.WRITE, 1 << 20, len(data), data, generation=2)
    await asyncio.sleep(0)
    for _, t in clients:
        [call] = t.calls
        assert sum(1 for b in call if b is data) == 2  # the caller's buffer, twice
        assert sum(len(b) for b in call if b is not data) < 4096  # and headers only
