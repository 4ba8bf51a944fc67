"""The replica wire codec: round trips, arbitrary chunking, and fuzzing with random bytes."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from cargohold.errors import InvalidArgument, ProtocolError, RemoteProtocolError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op


def _join(bufs) -> bytes:
    return b"".join(bytes(b) for b in bufs)


requests = st.builds(
    lambda op, flags, rid, off, ln, payload, gen: (op, flags, rid, off, ln, payload, gen),
    st.sampled_from(sorted(wire.OPS)),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=9000),
    st.integers(0, 2**64 - 1),
)


@given(st.lists(requests, max_size=20), st.data())
@settings(max_examples=200, deadline=None)
def test_requests_round_trip_under_any_chunking(reqs, data):
    stream = b"".join(
        _join(wire.encode_request(op, rid, off, ln, payload, flags, gen))
        for op, flags, rid, off, ln, payload, gen in reqs
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = wire.RequestDecoder()
    got = []
    prev = 0
    for c in [*cuts, len(stream)]:
        got += dec.feed(stream[prev:c])
        prev = c
    assert [
        (r.op, r.flags, r.id, r.offset, r.length, bytes(r.payload), r.generation) for r in got
    ] == reqs
    assert dec.buffered == 0


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            st.binary(max_size=5000),
        ),
        max_size=10,
    )
)
def test_replies_round_trip(replies):
    stream = b"".join(
        _join(wire.encode_reply(rid, status, gen, p)) for status, rid, gen, p in replies
    )
    dec = wire.ReplyDecoder()
    got = []
    for i in range(0, len(stream), 777):
        got += dec.feed(stream[i : i + 777])
    assert [(r.status, r.id, r.generation, bytes(r.payload)) for r in got] == replies


def test_large_payload_spanning_many_chunks_is_joined_once():
    payload = bytes(range(256)) * 4096 * 4  # 4 MiB
    stream = _join(wire.encode_request(Op.WRITE, 9, 0, len(payload), payload))
    dec = wire.RequestDecoder()
    out = []
    for i in range(0, len(stream), 65536):
        out += dec.feed(stream[i : i + 65536])
    assert len(out) == 1 and bytes(out[0].payload) == payload


@given(st.binary(min_size=1, max_size=4000))
@settings(max_examples=500)
def test_random_bytes_raise_only_protocol_errors(blob):
    dec = wire.RequestDecoder()
    try:
        for r in dec.feed(blob):
            assert r.op >= 0
    except ProtocolError:
        pass


def test_bad_magic_is_a_remote_protocol_error():
    frame = bytearray(_join(wire.encode_request(Op.READ, 1, 0, 4096)))
    frame[0:4] = b"XXXX"
    with pytest.raises(RemoteProtocolError, match="bad request magic"):
        wire.RequestDecoder().feed(bytes(frame))


def test_oversized_payload_is_refused_before_buffering():
    hdr = wire.REQUEST.pack(wire.REQUEST_MAGIC, Op.WRITE, 0, 1, 0, 0, wire.MAX_PAYLOAD + 1, 0)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        wire.RequestDecoder().feed(hdr)


def test_bad_json_arguments_are_a_bad_request_not_a_protocol_error():
    (req,) = wire.RequestDecoder().feed(_join(wire.encode_request(Op.OPEN, 1, payload=b"{nope")))
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        req.args()
    (req,) = wire.RequestDecoder().feed(_join(wire.encode_request(Op.OPEN, 1, payload=b"[1]")))
    with pytest.raises(InvalidArgument, match="JSON object"):
        req.args()


def test_sample_frames_decode(tmp_path):
    """The checked-in sample frames (docs/formats/replica-wire.md) decode as documented."""
    import pathlib

    sample = pathlib.Path(__file__).parents[2] / "data" / "replica-wire-sample.bin"
    reqs = wire.RequestDecoder().feed(sample.read_bytes())
    assert [(Op(r.op).name, r.id, r.offset, r.length) for r in reqs] == [
        ("HELLO", 1, 0, 0),
        ("OPEN", 2, 0, 0),
        ("WRITE", 3, 8192, 4096),
        ("FLUSH", 4, 0, 0),
        ("READ", 5, 8192, 4096),
        ("CHECKSUMS", 6, 0, 65536),
    ]
    assert reqs[5].args() == {"digest_blocks": 8}
    assert reqs[1].args() == {"replica": "pvc-1234-r0", "epoch": 7}
    assert bytes(reqs[2].payload) == b"\xab" * 4096
    assert reqs[2].flags == wire.FLAG_FUA
    assert reqs[2].generation == 42 and reqs[4].generation == 0


def _receive(dec, stream: bytes, sizes: list[int]) -> list:
    """Deliver ``stream`` as asyncio's BufferedProtocol would: into ``get_buffer``, at most
    the buffer's length (and the next of ``sizes``) at a time."""
    got, pos, i = [], 0, 0
    while pos < len(stream):
        buf = dec.get_buffer()
        n = min(len(buf), len(stream) - pos, sizes[i % len(sizes)] if sizes else len(buf))
        buf[:n] = stream[pos : pos + n]
        pos, i = pos + n, i + 1
        got += dec.buffer_updated(n)
    return got


big_requests = st.builds(
    lambda op, rid, payload: (op, 0, rid, 0, len(payload), payload, 0),
    st.sampled_from([Op.WRITE, Op.IMPORT]),
    st.integers(0, 2**32),
    st.one_of(st.binary(max_size=200), st.integers(60_000, 300_000).map(lambda n: b"\xab" * n)),
)


@given(st.lists(st.one_of(requests, big_requests), max_size=8), st.lists(st.integers(1, 100_000)))
@settings(max_examples=150, deadline=None)
def test_receiving_in_place_gives_what_feeding_gives(reqs, sizes):
    stream = b"".join(
        _join(wire.encode_request(op, rid, off, ln, payload, flags, gen))
        for op, flags, rid, off, ln, payload, gen in reqs
    )
    dec = wire.RequestDecoder()
    got = _receive(dec, stream, sizes)
    assert [
        (r.op, r.flags, r.id, r.offset, r.length, bytes(r.payload), r.generation) for r in got
    ] == reqs
    assert dec.buffered == 0


def test_a_large_frame_is_received_straight_into_its_own_buffer():
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = _join(wire.encode_request(Op.WRITE, 1, 0, len(payload), payload))
    dec = wire.RequestDecoder()
    first = dec.get_buffer()
    first[:1000] = stream[:1000]
    assert dec.buffer_updated(1000) == []
    rest = dec.get_buffer()  # the frame's own buffer, exactly what is still missing
    assert len(rest) == len(stream) - 1000
    rest[:] = stream[1000:]
    (req,) = dec.buffer_updated(len(rest))
    assert req.payload == payload and req.payload.obj is rest.obj  # no copy, no join


# --- CHECKSUMS (op 58) results --------------------------------------------------------


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 3000),
    st.integers(0, 70),
    st.data(),
)
def test_checksums_round_trip(lba, count, window, data):
    n = wire.expected_values(count, window)
    values = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
    raw = b"".join(v.to_bytes(4, "little") for v in values)
    got = wire.decode_checksums(_join(wire.encode_checksums(lba, count, raw, window)))
    assert (got.lba, got.count, got.digest_blocks, got.as_list()) == (lba, count, window, values)
    assert got.n_values == n


@given(st.binary(max_size=200))
def test_checksums_decoder_rejects_or_decodes_any_bytes(blob):
    try:
        got = wire.decode_checksums(blob)
    except RemoteProtocolError:
        return
    assert len(got.values) == 4 * got.n_values


@pytest.mark.parametrize(
    "mangle, why",
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + (2).to_bytes(2, "little") + b[6:], "version"),
        (lambda b: b[:-4], "bytes, expected"),
        (lambda b: b + b"\0\0\0\0", "bytes, expected"),
        (lambda b: b[:6] + (0).to_bytes(2, "little") + b[8:], "flags"),  # window without flag
        (lambda b: b[:16] + (2**20).to_bytes(4, "little") + b[20:], "at most"),
    ],
)
def test_checksums_decoder_names_what_is_wrong(mangle, why):
    good = _join(wire.encode_checksums(5, 8, bytes(8), digest_blocks=4))
    assert wire.decode_checksums(good).as_list() == [0, 0]
    with pytest.raises(RemoteProtocolError, match=why):
        wire.decode_checksums(mangle(good))


def test_checksums_encoder_refuses_a_wrong_number_of_values():
    with pytest.raises(InvalidArgument):
        wire.encode_checksums(0, 8, bytes(4 * 7))
    with pytest.raises(InvalidArgument):
        wire.encode_checksums(0, wire.MAX_CHECKSUM_BLOCKS + 1, b"", 2**31)


def test_sample_checksums_result_decodes():
    """The checked-in CHECKSUMS result (docs/formats/replica-wire.md): blocks 0-3, block 2
    holding 4096 bytes of 0xab, the others never written (the CRC32C of a zero block)."""
    import pathlib

    import crc32c

    sample = pathlib.Path(__file__).parents[2] / "data" / "replica-checksums-sample.bin"
    got = wire.decode_checksums(sample.read_bytes())
    zero = crc32c.crc32c(bytes(4096))
    assert zero == 0x98F94189
    assert (got.lba, got.count, got.digest_blocks) == (0, 4, 0)
    assert got.as_list() == [zero, zero, crc32c.crc32c(b"\xab" * 4096), zero]
