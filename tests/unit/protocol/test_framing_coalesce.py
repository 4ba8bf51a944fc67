"""``framing.coalesce``: the small buffers of one loop pass joined into TLS-record-sized
chunks, in order, large payloads passed on unjoined (the bytes on the wire unchanged)."""

from __future__ import annotations

import itertools
import os

from hypothesis import given
from hypothesis import strategies as st

from cargohold.protocol import replica_wire as wire
from cargohold.protocol.framing import RECORD, coalesce


def test_sixteen_4k_writes_become_few_records_with_the_same_bytes() -> None:
    parts: list = []
    for i in range(16):
        parts += wire.encode_request(wire.Op.WRITE, i + 1, i * 4096, 4096, os.urandom(4096), 0, i)
    out = coalesce(parts)
    assert b"".join(out) == b"".join(bytes(p) for p in parts)
    # 16 x (48 + 4096) bytes: whole buffers in chunks of <= 16 KiB (3 frames and a header each)
    assert len(parts) == 32 and len(out) == 6
    assert all(len(c) <= RECORD for c in out)


def test_a_large_payload_is_passed_on_as_is_between_joined_runs() -> None:
    big = memoryview(bytearray(1 << 20))
    hdr = b"h" * 48
    out = coalesce([b"a" * 10, b"b" * 20, hdr, big, b"r" * 32, b"s" * 32])
    assert out[0] == b"a" * 10 + b"b" * 20 + hdr
    assert out[1] is big  # not copied
    assert out[2] == b"r" * 32 + b"s" * 32
    assert len(out) == 3


def test_a_lone_small_buffer_is_not_copied() -> None:
    one = b"x" * 100
    assert coalesce([one])[0] is one
    assert coalesce([]) == []


@given(st.lists(st.integers(min_value=0, max_value=3 * RECORD), max_size=40))
def test_bytes_and_order_are_kept_and_chunks_fit(sizes: list[int]) -> None:
    parts = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    out = coalesce(parts)
    assert b"".join(out) == b"".join(parts)
    for c in out:  # a chunk over the limit is one buffer that was given as it is
        assert len(c) <= RECORD or any(c is p for p in parts)
    # no two neighbouring small chunks could have been one
    for a, b in itertools.pairwise(out):
        assert len(a) >= RECORD or len(b) >= RECORD or len(a) + len(b) > RECORD


def test_the_receive_buffer_grows_with_the_transports_hint_within_bounds() -> None:
    from cargohold.protocol.framing import SCRATCH, SCRATCH_MAX

    dec = wire.RequestDecoder()
    assert len(dec.get_buffer()) == SCRATCH
    assert len(dec.get_buffer(65536 + 4096)) == 65536 + 4096  # 16 pipelined 4 KiB writes
    assert len(dec.get_buffer(10 << 20)) == SCRATCH_MAX
    # a whole batch received in one pass decodes into every request at once
    stream = b"".join(
        b"".join(bytes(p) for p in wire.encode_request(wire.Op.WRITE, i, 0, 4096, b"x" * 4096))
        for i in range(1, 17)
    )
    buf = dec.get_buffer(len(stream) + 256)
    buf[: len(stream)] = stream
    reqs = dec.buffer_updated(len(stream))
    assert [r.id for r in reqs] == list(range(1, 17))
    assert all(bytes(r.payload) == b"x" * 4096 for r in reqs)
