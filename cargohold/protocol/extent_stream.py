"""Extent stream: a range of a replica as a self-describing stream of allocated extents.

Produced by ``ReplicaStore.export`` and consumed by ``ReplicaStore.import_stream``; the
rebuild and backup paths move data in this format. Every data block carries its CRC32C, so a
stream is verified end to end. Sans-I/O. Layout: docs/formats/extent-stream.md.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import crc32c

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import RemoteProtocolError

MAGIC = b"CHXSTRM\x00"
VERSION = 1
VERSIONS_READ = frozenset({1})

HEADER = struct.Struct("<8sHHIQQQQ")  # magic version flags block_size start end since generation
RECORD = struct.Struct("<B3xIQ")  # kind, count (blocks), lba

KIND_DATA = 1
KIND_ZERO = 2
KIND_END = 0xFF


@dataclass(frozen=True, slots=True)
class StreamHeader:
    start: int  # first byte offset the stream covers
    end: int  # byte offset after the last one it covers (the next chunk starts here)
    since: int  # 0 = full content; otherwise only blocks changed after this generation
    generation: int  # the source's generation when the stream was made


@dataclass(frozen=True, slots=True)
class Extent:
    kind: int  # KIND_DATA or KIND_ZERO
    lba: int  # first block
    count: int  # blocks
    data: memoryview | None = None  # count * BLOCK_SIZE bytes for KIND_DATA
    crcs: memoryview | None = None  # count little-endian u32 CRC32C values for KIND_DATA


def encode(header: StreamHeader, extents: Iterable[Extent]) -> list[bytes | memoryview]:
    """Encode a stream as a list of buffers (ready for ``writelines``, no copying of data)."""
    out: list[bytes | memoryview] = [
        HEADER.pack(
            MAGIC,
            VERSION,
            0,
            BLOCK_SIZE,
            header.start,
            header.end,
            header.since,
            header.generation,
        )
    ]
    n = 0
    for e in extents:
        out.append(RECORD.pack(e.kind, e.count, e.lba))
        if e.kind == KIND_DATA:
            assert e.data is not None and e.crcs is not None
            out.append(e.crcs)
            out.append(e.data)
        n += 1
    out.append(RECORD.pack(KIND_END, n, 0))
    return out


def data_extent(lba: int, data: bytes | bytearray | memoryview) -> Extent:
    """A DATA extent with the CRC32C of each of its blocks computed here."""
    mv = memoryview(data)
    count = len(mv) // BLOCK_SIZE
    crcs = struct.pack(
        f"<{count}I",
        *map(crc32c.crc32c, (mv[i : i + BLOCK_SIZE] for i in range(0, len(mv), BLOCK_SIZE))),
    )
    return Extent(KIND_DATA, lba, count, mv, memoryview(crcs))


def decode(buf: bytes | bytearray | memoryview) -> tuple[StreamHeader, list[Extent]]:
    """Decode and check a whole stream; raises RemoteProtocolError saying what is wrong."""
    mv = memoryview(buf)
    if len(mv) < HEADER.size:
        raise RemoteProtocolError(f"extent stream truncated: {len(mv)} bytes, no header")
    magic, version, _flags, bsize, start, end, since, gen = HEADER.unpack_from(mv, 0)
    if magic != MAGIC:
        raise RemoteProtocolError(f"extent stream: bad magic {bytes(magic)!r}")
    if version not in VERSIONS_READ:
        raise RemoteProtocolError(f"extent stream: version {version} not readable")
    if bsize != BLOCK_SIZE:
        raise RemoteProtocolError(f"extent stream: block size {bsize}, expected {BLOCK_SIZE}")
    if start % BLOCK_SIZE or end % BLOCK_SIZE or end < start:
        raise RemoteProtocolError(f"extent stream: bad range [{start}, {end})")
    pos = HEADER.size
    extents: list[Extent] = []
    lo, hi = start // BLOCK_SIZE, end // BLOCK_SIZE
    while True:
        if len(mv) - pos < RECORD.size:
            raise RemoteProtocolError("extent stream truncated: no END record")
        kind, count, lba = RECORD.unpack_from(mv, pos)
        pos += RECORD.size
        if kind == KIND_END:
            if count != len(extents):
                raise RemoteProtocolError(
                    f"extent stream: END says {count} extents, found {len(extents)}"
                )
            if pos != len(mv):
                raise RemoteProtocolError(f"extent stream: {len(mv) - pos} bytes after END")
            return StreamHeader(start, end, since, gen), extents
        if kind not in (KIND_DATA, KIND_ZERO):
            raise RemoteProtocolError(f"extent stream: unknown record kind {kind}")
        if count == 0 or lba < lo or lba + count > hi:
            raise RemoteProtocolError(
                f"extent stream: extent of {count} blocks at {lba} outside [{lo}, {hi})"
            )
        if kind == KIND_ZERO:
            extents.append(Extent(KIND_ZERO, lba, count))
            continue
        need = count * (4 + BLOCK_SIZE)
        if len(mv) - pos < need:
            raise RemoteProtocolError("extent stream truncated inside a data extent")
        crcs = mv[pos : pos + 4 * count]
        data = mv[pos + 4 * count : pos + need]
        pos += need
        extents.append(Extent(KIND_DATA, lba, count, data, crcs))
