"""The extent stream codec: round trips, the checked-in sample, and every way to be broken."""

from __future__ import annotations

import pathlib
import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import ChecksumError, RemoteProtocolError
from cargohold.protocol import extent_stream as xs
from cargohold.store.memory_store import MemoryStore

SAMPLE = pathlib.Path(__file__).parents[2] / "data" / "extent-stream-sample.bin"


def _join(bufs) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def test_sample_decodes_as_documented():
    header, ext = xs.decode(SAMPLE.read_bytes())
    assert header == xs.StreamHeader(0, 16 * BLOCK_SIZE, 0, 42)
    assert [(e.kind, e.lba, e.count) for e in ext] == [(xs.KIND_DATA, 2, 2), (xs.KIND_ZERO, 5, 3)]
    assert bytes(ext[0].data) == b"D" * 8192


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 4), st.binary(min_size=1, max_size=1)), max_size=8
    )
)
def test_round_trip(spec):
    lba = 0
    ext = []
    for is_data, count, fill in spec:
        if is_data:
            ext.append(xs.data_extent(lba, fill * (count * BLOCK_SIZE)))
        else:
            ext.append(xs.Extent(xs.KIND_ZERO, lba, count))
        lba += count + 1
    header = xs.StreamHeader(0, (lba + 1) * BLOCK_SIZE, 7, 9)
    h2, e2 = xs.decode(_join(xs.encode(header, ext)))
    assert h2 == header
    assert [(e.kind, e.lba, e.count, bytes(e.data or b"")) for e in e2] == [
        (e.kind, e.lba, e.count, bytes(e.data or b"")) for e in ext
    ]


@given(st.binary(max_size=300))
def test_random_bytes_are_protocol_errors(blob):
    try:
        xs.decode(blob)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + struct.pack("<H", 9) + b[10:], "version 9"),
        (lambda b: b[:-16], "no END record"),
        (lambda b: b + b"\0", "bytes after END"),
        (lambda b: b[:24] + struct.pack("<Q", 4096) + b[32:], "outside"),
    ],
)
def test_broken_streams_say_what_is_wrong(mutate, message):
    with pytest.raises(RemoteProtocolError, match=message):
        xs.decode(mutate(SAMPLE.read_bytes()))


def test_import_refuses_a_stream_with_a_bad_block_and_writes_nothing():
    blob = bytearray(SAMPLE.read_bytes())
    blob[-100] ^= 0xFF  # inside the data of the DATA extent
    s = MemoryStore(16 * BLOCK_SIZE)
    s.write(5 * BLOCK_SIZE, b"k" * BLOCK_SIZE)
    with pytest.raises(ChecksumError, match="fail their checksum"):
        s.import_stream(bytes(blob))
    assert s.read(5 * BLOCK_SIZE, BLOCK_SIZE) == b"k" * BLOCK_SIZE  # ZERO extent not applied
