"""WRITE_BATCH (replica wire version 2): round trips, the checked-in sample, and malformed
batches refused with errors that say what is wrong."""

from __future__ import annotations

import pathlib
import re
import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from cargohold.errors import InvalidArgument, RemoteProtocolError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op


def _join(bufs) -> bytes:
    return b"".join(bytes(b) for b in bufs)


writes = st.lists(
    st.tuples(
        st.integers(0, 2**64 - 1),
        st.binary(max_size=3000),
        st.sampled_from([0, wire.FLAG_FUA]),
        st.integers(0, 2**64 - 1),
    ),
    min_size=1,
    max_size=40,
)


@given(writes, st.integers(0, 2**64 - 1), st.data())
@settings(max_examples=150, deadline=None)
def test_batches_round_trip_under_any_chunking(batch, rid, data):
    stream = _join(wire.encode_write_batch(rid, batch))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = wire.RequestDecoder()
    got = []
    prev = 0
    for c in [*cuts, len(stream)]:
        got += dec.feed(stream[prev:c])
        prev = c
    [req] = got
    assert (req.op, req.id, req.generation) == (Op.WRITE_BATCH, rid, 0)
    assert req.length == sum(len(w[1]) for w in batch)
    out = wire.decode_write_batch(req.payload)
    assert [(w.offset, bytes(w.data), w.flags, w.generation) for w in out] == batch


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 5, 22, 28, 1000]), st.integers(0, 2**64 - 1), st.binary()),
        max_size=40,
    )
)
@settings(max_examples=150, deadline=None)
def test_results_round_trip(results):
    results = [(s, g, b if s else b"") for s, g, b in results]
    out = wire.decode_batch_results(_join(wire.encode_batch_results(results)), len(results))
    assert [(r.status, r.generation, bytes(r.payload)) for r in out] == results


def test_sample_batch_and_its_reply_decode():
    """tests/data/replica-write-batch-sample.bin (docs/formats/replica-wire.md): a batch of
    three writes, then its reply, in which the second failed (disk full) and the third
    left a gap (the replica stays complete through 41)."""
    sample = pathlib.Path(__file__).parents[2] / "data" / "replica-write-batch-sample.bin"
    blob = sample.read_bytes()
    [req] = wire.RequestDecoder().feed(blob[:-172])
    assert (req.op, req.id, req.length) == (Op.WRITE_BATCH, 7, 16384)
    ws = wire.decode_write_batch(req.payload)
    assert [(w.offset, len(w.data), w.flags, w.generation) for w in ws] == [
        (0, 4096, 0, 41),
        (8192, 8192, wire.FLAG_FUA, 42),
        (4096, 4096, 0, 43),
    ]
    assert bytes(ws[1].data) == b"\x22" * 8192
    [rep] = wire.ReplyDecoder().feed(blob[-172:])
    assert (rep.status, rep.id, rep.generation) == (0, 7, 41)
    res = wire.decode_batch_results(rep.payload, 3)
    assert [(r.status, r.generation) for r in res] == [(0, 41), (28, 41), (0, 41)]
    assert wire.parse_json(res[1].payload)["type"] == "NoSpace"


def _batch(count: int, entries: list[tuple[int, int, int, int]], data: bytes, **kw) -> bytes:
    head = struct.pack(
        "<4sHHII", kw.get("magic", b"CHWB"), kw.get("version", 1), kw.get("flags", 0), count, 0
    )
    table = b"".join(struct.pack("<QIHHQ", o, n, f, 0, g) for o, n, f, g in entries)
    return head + table + data


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"CHWB", "shorter than its header"),
        (_batch(1, [(0, 4, 0, 1)], b"abcd", magic=b"XXXX"), "bad magic"),
        (_batch(1, [(0, 4, 0, 1)], b"abcd", version=9), "version 9 not readable"),
        (_batch(1, [(0, 4, 0, 1)], b"abcd", flags=4), "unknown flags"),
        (_batch(0, [], b""), "0 writes"),
        (_batch(wire.MAX_BATCH_WRITES + 1, [], b""), "writes (1 to"),
        (_batch(2, [(0, 4, 0, 1)], b"abcd"), "its table of 2 needs"),
        (_batch(1, [(0, 8, 0, 1)], b"abcd"), "runs past the payload"),
        (_batch(1, [(0, 4, 0, 1)], b"abcdef"), "2 bytes after the last write"),
        (_batch(1, [(0, 4, 8, 1)], b"abcd"), "write 0 has unknown flags"),
    ],
)
def test_malformed_batches_are_bad_requests_saying_what_is_wrong(payload, says):
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        wire.decode_write_batch(payload)


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_are_refused_cleanly(blob):
    for decode in (wire.decode_write_batch, lambda b: wire.decode_batch_results(b, 2)):
        try:
            decode(blob)
        except (InvalidArgument, RemoteProtocolError):
            pass


def test_bad_replies_are_the_servers_fault():
    good = _join(wire.encode_batch_results([(0, 5, b""), (22, 5, b"{}")]))
    with pytest.raises(RemoteProtocolError, match="answers 2 writes, 3 were sent"):
        wire.decode_batch_results(good, 3)
    with pytest.raises(RemoteProtocolError, match="expected"):
        wire.decode_batch_results(good + b"x", 2)
    with pytest.raises(RemoteProtocolError, match="bad magic"):
        wire.decode_batch_results(b"CHWB" + good[4:], 2)
    ok_with_body = _join(wire.encode_batch_results([(0, 5, b"")]))
    ok_with_body = ok_with_body[:20] + struct.pack("<I", 2) + ok_with_body[24:] + b"{}"
    with pytest.raises(RemoteProtocolError, match="error body for a write that succeeded"):
        wire.decode_batch_results(ok_with_body, 1)


def test_the_encoder_refuses_empty_and_oversized_batches():
    with pytest.raises(InvalidArgument):
        wire.encode_write_batch(1, [])
    with pytest.raises(InvalidArgument):
        wire.encode_write_batch(1, [(0, b"", 0, 1)] * (wire.MAX_BATCH_WRITES + 1))
    big = memoryview(bytearray(wire.MAX_PAYLOAD))
    with pytest.raises(InvalidArgument, match="exceeds the limit"):
        wire.encode_write_batch(1, [(0, big, 0, 1)])
