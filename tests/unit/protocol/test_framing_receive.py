"""``framing.StreamBuffer``: a large frame received in place lands in a buffer allocated
without zeroing (``framing.uninitialized``); every byte of it must come from the stream,
whatever that memory held before, for the NBD codec and the replica wire's decoder alike."""

from __future__ import annotations

import os
import struct

import pytest

from cargohold.buffers import uninitialized
from cargohold.protocol import framing, nbd
from cargohold.protocol import replica_wire as wire
from tests.support.nbd_session import ready_server


def test_uninitialized_is_a_writable_bytearray_of_the_size() -> None:
    for n in (0, 1, 4096, (1 << 20) + 28):
        buf = uninitialized(n)
        assert type(buf) is bytearray and len(buf) == n
        memoryview(buf)[:] = b"\x5a" * n
        assert buf == b"\x5a" * n
    with pytest.raises(ValueError):
        uninitialized(-1)


@pytest.fixture
def dirty(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Frames allocated for in-place receiving start full of 0xA5 (as reused heap memory
    would), so a byte the stream did not write shows; the sizes allocated are recorded."""
    sizes: list[int] = []

    def alloc(n: int) -> bytearray:
        sizes.append(n)
        return bytearray(b"\xa5" * n)

    monkeypatch.setattr(framing, "uninitialized", alloc)
    return sizes


def _receive(decoder, stream: bytes, step: int, get=lambda d: d.get_buffer()) -> list:
    out, pos = [], 0
    while pos < len(stream):
        buf = get(decoder)
        n = min(len(buf), step, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        pos += n
        out += decoder.buffer_updated(n)
    return out


@pytest.mark.parametrize("step", [1000, 4096, 65536, 1 << 20])
def test_nbd_writes_received_in_place_hold_exactly_what_was_sent(dirty, step: int) -> None:
    payloads = [bytes(1 << 20), os.urandom(1 << 20), bytes(300 * 1024)]
    stream = b""
    for h, p in enumerate(payloads):
        stream += struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, h, 0, len(p)) + p
    c = ready_server(64 << 20)
    got = _receive(c, stream, step)
    assert [bytes(e.data) for e in got] == payloads
    assert dirty, "no frame was received in place"
    assert all(
        n == nbd.REQUEST.size + (1 << 20) or n == nbd.REQUEST.size + 300 * 1024 for n in dirty
    )


@pytest.mark.parametrize("step", [1000, 65536, 1 << 20])
def test_replica_writes_received_in_place_hold_exactly_what_was_sent(dirty, step: int) -> None:
    payloads = [bytes(1 << 20), os.urandom(1 << 20)]
    stream = b""
    for i, p in enumerate(payloads):
        frames = wire.encode_request(wire.Op.WRITE, i + 1, i << 20, len(p), p, 0, i + 1)
        stream += b"".join(bytes(f) for f in frames)
    got = _receive(wire.RequestDecoder(), stream, step, lambda d: d.get_buffer(0))
    assert [bytes(r.payload) for r in got] == payloads
    assert [r.generation for r in got] == [1, 2]
    assert dirty, "no frame was received in place"
