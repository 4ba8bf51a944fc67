"""Every receive path that may land a frame in a buffer not zeroed first
(``buffers.uninitialized`` through ``framing.StreamBuffer``), fuzzed: the NBD server's
transmission phase (the engine), the replica wire's request decoder (the replica server)
and its reply decoder (the engine's client, large READ and EXPORT replies). The buffers
start full of 0xA5, the stream never holds that byte, and a stream is cut anywhere (a
connection closed mid-frame), received in chunks of any size, or has a frame's length
field changed (a malformed length). Whatever happens, each frame handed on is exactly the
bytes the stream carried at its place — header fields and payload — so no byte of the
pre-fill ever reaches a payload, and a frame the stream did not finish is never handed on;
a length the codec refuses is a protocol error, not a frame."""

from __future__ import annotations

import struct
from typing import Any
from unittest import mock

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from cargohold.errors import ProtocolError
from cargohold.protocol import framing, nbd
from cargohold.protocol import replica_wire as wire
from tests.support.nbd_session import ready_server

FILL = 0xA5
SIZES = st.sampled_from([0, 1, 4096, 65535, 65536, 65537, 100_000, 200_000])


_PATTERN = bytes(range(FILL))  # every byte but 0xA5 and above


ALLOCATED: list[int] = []  # the sizes of the buffers made for in-place receiving


def _alloc(n: int) -> bytearray:
    ALLOCATED.append(n)
    return bytearray(bytes([FILL]) * n)


def _payload(seed: int, n: int) -> bytes:
    """``n`` bytes that never hold 0xA5."""
    start = seed % FILL
    return (_PATTERN * (n // FILL + 2))[start : start + n]


def _receive(decoder: Any, stream: bytes, chunks: list[int], get: Any) -> list[Any]:
    """``stream`` into ``decoder`` through get_buffer/buffer_updated, in chunks of the
    given sizes (cycled); -> the events, up to a protocol error."""
    out: list[Any] = []
    pos, i = 0, 0
    with mock.patch.object(framing, "uninitialized", _alloc):
        while pos < len(stream):
            buf = get(decoder)
            n = min(len(buf), chunks[i % len(chunks)], len(stream) - pos)
            i += 1
            buf[:n] = stream[pos : pos + n]
            pos += n
            try:
                out += decoder.buffer_updated(n)
            except ProtocolError:
                return out
    return out


cases = st.tuples(
    st.lists(st.tuples(st.integers(0, 250), SIZES), min_size=1, max_size=5),
    st.floats(0.0, 1.0),  # where the stream is cut (1.0: not cut)
    st.lists(st.integers(1, 300_000), min_size=1, max_size=8),  # chunk sizes
    st.one_of(st.none(), st.tuples(st.integers(0, 4), st.integers(0, 2**32 - 1))),
)


def _cut(stream: bytes, where: float) -> bytes:
    return stream if where >= 1.0 else stream[: int(len(stream) * where)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_replica_requests_handed_on_are_exactly_what_the_stream_carried(case):
    frames, where, chunks, bad = case
    stream = b""
    for k, (seed, n) in enumerate(frames):
        p = _payload(seed, n)
        hdr = wire.REQUEST.pack(wire.REQUEST_MAGIC, wire.Op.WRITE, 0, k + 1, 0, n, n, k + 1)
        if bad is not None and bad[0] == k:  # the payload length field says otherwise
            hdr = hdr[:32] + struct.pack("<I", bad[1]) + hdr[36:]
        stream += hdr + p
    stream = _cut(stream, where)
    got = _receive(wire.RequestDecoder(), stream, chunks, lambda d: d.get_buffer(0))
    pos = 0
    for r in got:
        frame = wire.REQUEST.pack(
            wire.REQUEST_MAGIC,
            r.op,
            r.flags,
            r.id,
            r.offset,
            r.length,
            len(r.payload),
            r.generation,
        ) + bytes(r.payload)
        assert frame == stream[pos : pos + len(frame)], "a frame the stream did not carry"
        assert FILL not in bytes(r.payload)
        pos += len(frame)
    assert pos <= len(stream)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_replica_replies_handed_on_are_exactly_what_the_stream_carried(case):
    frames, where, chunks, bad = case
    stream = b""
    for k, (seed, n) in enumerate(frames):
        hdr = b"".join(bytes(x) for x in wire.encode_reply(k + 1, 0, k + 1, b""))
        hdr = hdr[: wire.REPLY.size]
        fields = list(wire.REPLY.unpack(hdr))
        hdr = wire.REPLY.pack(*fields[:4], n if bad is None or bad[0] != k else bad[1], fields[5])
        stream += hdr + _payload(seed, n)
    stream = _cut(stream, where)
    got = _receive(wire.ReplyDecoder(), stream, chunks, lambda d: d.get_buffer(0))
    pos = 0
    for r in got:
        head = stream[pos : pos + wire.REPLY.size]
        _, status, rid, gen, plen, _ = wire.REPLY.unpack(head)
        assert (status, rid, gen, plen) == (r.status, r.id, r.generation, len(r.payload))
        body = stream[pos + wire.REPLY.size : pos + wire.REPLY.size + plen]
        assert bytes(r.payload) == body and len(body) == plen
        assert FILL not in bytes(r.payload)
        pos += wire.REPLY.size + plen


def _nbd_server() -> nbd.ServerConnection:
    return ready_server(64 << 20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_nbd_writes_handed_on_are_exactly_what_the_stream_carried(case):
    frames, where, chunks, bad = case
    stream = b""
    for k, (seed, n) in enumerate(frames):
        length = n if bad is None or bad[0] != k else bad[1]
        hdr = struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, k + 1, 0, length)
        stream += hdr + _payload(seed, n)
    stream = _cut(stream, where)
    got = _receive(_nbd_server(), stream, chunks, lambda d: d.get_buffer())
    pos = 0
    for e in got:
        assert isinstance(e, nbd.Request | nbd.Invalid), e
        hdr = struct.pack(
            ">IHHQQI", nbd.REQUEST_MAGIC, e.flags, e.cmd, e.handle, e.offset, e.length
        )
        assert stream[pos : pos + len(hdr)] == hdr
        pos += len(hdr)
        if e.cmd == nbd.CMD_WRITE:
            if isinstance(e, nbd.Request):
                assert bytes(e.data) == stream[pos : pos + e.length]
                assert len(e.data) == e.length and FILL not in bytes(e.data)
            pos += e.length
    assert pos <= len(stream)


def test_the_fuzzed_paths_reach_the_buffers_not_zeroed():
    """The cases above do land frames in the pre-filled buffers: one frame of 200,000
    bytes received 1,000 bytes at a time, through each of the three decoders."""
    p = _payload(1, 200_000)
    streams = [
        (
            wire.RequestDecoder(),
            wire.REQUEST.pack(wire.REQUEST_MAGIC, wire.Op.WRITE, 0, 1, 0, len(p), len(p), 1) + p,
            lambda d: d.get_buffer(0),
        ),
        (
            wire.ReplyDecoder(),
            b"".join(bytes(x) for x in wire.encode_reply(1, 0, 1, p)),
            lambda d: d.get_buffer(0),
        ),
        (
            _nbd_server(),
            struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, 1, 0, len(p)) + p,
            lambda d: d.get_buffer(),
        ),
    ]
    for decoder, stream, get in streams:
        ALLOCATED.clear()
        got = _receive(decoder, stream, [1000], get)
        assert len(got) == 1 and ALLOCATED == [len(stream)]
