"""On-disk formats of the replica store: headers of every file, the block-map record.

Pure encode/decode/check, no I/O (the store does the I/O). Each structure starts with a
magic and a version; the version written and the versions read sit next to the struct.
Documented with offset tables in docs/formats/replica-store.md — keep the two in step.
"""

from __future__ import annotations

import json
import struct
import uuid as _uuid
from dataclasses import dataclass
from typing import Any

import crc32c

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import FormatError

# --- block-map record ------------------------------------------------------------------
# One 16-byte record per 4 KiB block, little-endian:
#   cur  u32  CRC32C of the block's committed content
#   pend u32  CRC32C of a write in progress (== cur when none)
#   meta u64  (generation << 2) | state
RECORD_SIZE = 16
RECORDS_PER_PAGE = 4096 // RECORD_SIZE
# RECORD, the numpy dtype of a record ([("cur", "<u4"), ("pend", "<u4"), ("meta", "<u8")]),
# is made on first use (``__getattr__`` below): this module stays importable without numpy,
# for store.reader in the engine, which reads records through memoryview casts.


def __getattr__(name: str) -> Any:
    if name == "RECORD":
        import numpy as np

        record = np.dtype([("cur", "<u4"), ("pend", "<u4"), ("meta", "<u8")])
        assert record.itemsize == RECORD_SIZE
        globals()["RECORD"] = record
        return record
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ABSENT = 0  # not in this layer: look in the parent layer
DATA = 1  # content is in this layer's data file, checksummed by cur/pend
ZERO = 2  # reads as zeros; masks the parents (TRIM, WRITE_ZEROES)
STATE_MASK = 3
GEN_SHIFT = 2

HEADER_SIZE = 4096
"""Every map and data file starts with one 4 KiB header block; records/blocks follow."""

# --- map file header ---------------------------------------------------------------
MAP_MAGIC = b"CHMAP\x00\x00\x00"
MAP_VERSION = 1
MAP_VERSIONS_READ = frozenset({1})
# static part, CRC-protected: magic, version, header size, block size, nblocks, layer uuid
_MAP_STATIC = struct.Struct("<8sHHIQ16s")  # 40 bytes
_MAP_STATIC_CRC = struct.Struct("<I")  # at offset 40
MAP_GEN_OFFSET = 64  # u64: generation the replica is complete through (the head's counts)
MAP_FLAGS_OFFSET = 72  # u32: the MAP_FLAG_* bits
MAP_SEEN_OFFSET = 80  # u64: the newest generation recorded in this layer
MAP_DURABLE_OFFSET = 88  # u64: complete through at the last completed FLUSH
MAP_BOOT_OFFSET = 96  # 16 bytes: the boot id of the kernel that last opened the store
MAP_FLAG_CLEAN = 1  # closed cleanly
MAP_FLAG_FIELDS = 2  # durable and boot id are kept (code that knows them wrote the header)
MAP_FLAG_POWER_LOSS = 4  # recovered from a machine crash, not yet marked current
# Bytes 88-111 and flag bits 1-2 were zero in every file written before them, so version 1
# stays: older code reads these files and ignores the fields, and its stores of the flags
# word (the clean bit alone) clear MAP_FLAG_FIELDS, so values it did not keep are never
# trusted (docs/formats/replica-store.md, "Version").

# --- data file header --------------------------------------------------------------
DATA_MAGIC = b"CHDATA\x00\x00"
DATA_VERSION = 1
DATA_VERSIONS_READ = frozenset({1})
# magic, version, header size, block size, layer uuid, segment index
_DATA_HDR = struct.Struct("<8sHHI16sI")
SEGMENT_BLOCKS = 1 << 30
"""Blocks per data segment file (4 TiB): ext4 caps one file at 16 TiB - 4 KiB, so a layer's
data is split into segments ``layer-N.data`` (segment 0), ``layer-N.data.1``, ..."""

# --- replica meta file ---------------------------------------------------------------
META_MAGIC = b"CHREPLIC"
META_VERSION = 1
META_VERSIONS_READ = frozenset({1})
_META_HDR = struct.Struct("<8sHHII")  # magic, version, flags, body length, body crc32c
META_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MapHeader:
    nblocks: int
    layer_uuid: bytes
    generation: int = 0
    clean: bool = True
    version: int = MAP_VERSION
    seen: int = 0
    block_size: int = BLOCK_SIZE
    durable: int = 0
    boot_id: bytes | None = None  # None: the durable and boot id fields are not kept
    power_loss: bool = False

    @property
    def flags(self) -> int:
        return (
            (MAP_FLAG_CLEAN if self.clean else 0)
            | (MAP_FLAG_FIELDS if self.boot_id is not None else 0)
            | (MAP_FLAG_POWER_LOSS if self.power_loss else 0)
        )


def encode_map_header(h: MapHeader) -> bytes:
    buf = bytearray(HEADER_SIZE)
    _MAP_STATIC.pack_into(
        buf, 0, MAP_MAGIC, h.version, HEADER_SIZE, h.block_size, h.nblocks, h.layer_uuid
    )
    _MAP_STATIC_CRC.pack_into(buf, 40, crc32c.crc32c(bytes(buf[:40])))
    struct.pack_into("<Q", buf, MAP_GEN_OFFSET, h.generation)
    struct.pack_into("<I", buf, MAP_FLAGS_OFFSET, h.flags)
    struct.pack_into("<Q", buf, MAP_SEEN_OFFSET, max(h.seen, h.generation))
    if h.boot_id is not None:
        struct.pack_into("<Q", buf, MAP_DURABLE_OFFSET, min(h.durable, h.generation))
        buf[MAP_BOOT_OFFSET : MAP_BOOT_OFFSET + 16] = h.boot_id
    return bytes(buf)


def decode_map_header(buf: bytes | memoryview, where: str = "map file") -> MapHeader:
    if len(buf) < MAP_BOOT_OFFSET + 16:
        raise FormatError(f"{where}: header truncated ({len(buf)} bytes, expected 4096)")
    magic, version, hsize, bsize, nblocks, luuid = _MAP_STATIC.unpack_from(buf, 0)
    if magic != MAP_MAGIC:
        raise FormatError(f"{where}: bad magic {magic!r}, expected {MAP_MAGIC!r}")
    if version not in MAP_VERSIONS_READ:
        raise FormatError(
            f"{where}: format version {version} not readable (reads {sorted(MAP_VERSIONS_READ)})"
        )
    (crc,) = _MAP_STATIC_CRC.unpack_from(buf, 40)
    if crc != crc32c.crc32c(bytes(buf[:40])):
        raise FormatError(f"{where}: header checksum mismatch")
    if hsize != HEADER_SIZE or bsize != BLOCK_SIZE:
        raise FormatError(
            f"{where}: header size {hsize} / block size {bsize}, "
            f"expected {HEADER_SIZE} / {BLOCK_SIZE}"
        )
    (gen,) = struct.unpack_from("<Q", buf, MAP_GEN_OFFSET)
    (flags,) = struct.unpack_from("<I", buf, MAP_FLAGS_OFFSET)
    (seen,) = struct.unpack_from("<Q", buf, MAP_SEEN_OFFSET)
    (durable,) = struct.unpack_from("<Q", buf, MAP_DURABLE_OFFSET)
    fields = bool(flags & MAP_FLAG_FIELDS)
    return MapHeader(
        nblocks,
        luuid,
        gen,
        clean=bool(flags & MAP_FLAG_CLEAN),
        version=version,
        seen=seen,
        block_size=bsize,
        durable=durable if fields else 0,
        boot_id=bytes(buf[MAP_BOOT_OFFSET : MAP_BOOT_OFFSET + 16]) if fields else None,
        power_loss=bool(flags & MAP_FLAG_POWER_LOSS),
    )


def encode_data_header(layer_uuid: bytes, segment: int = 0) -> bytes:
    buf = bytearray(HEADER_SIZE)
    _DATA_HDR.pack_into(
        buf, 0, DATA_MAGIC, DATA_VERSION, HEADER_SIZE, BLOCK_SIZE, layer_uuid, segment
    )
    struct.pack_into("<I", buf, _DATA_HDR.size, crc32c.crc32c(bytes(buf[: _DATA_HDR.size])))
    return bytes(buf)


def decode_data_header(buf: bytes | memoryview, where: str = "data file") -> tuple[bytes, int]:
    """Check a data-file header -> (the layer uuid it belongs to, its segment index)."""
    n = _DATA_HDR.size
    if len(buf) < n + 4:
        raise FormatError(f"{where}: header truncated")
    magic, version, hsize, bsize, luuid, segment = _DATA_HDR.unpack_from(buf, 0)
    if magic != DATA_MAGIC:
        raise FormatError(f"{where}: bad magic {magic!r}, expected {DATA_MAGIC!r}")
    if version not in DATA_VERSIONS_READ:
        raise FormatError(f"{where}: format version {version} not readable")
    (crc,) = struct.unpack_from("<I", buf, n)
    if crc != crc32c.crc32c(bytes(buf[:n])):
        raise FormatError(f"{where}: header checksum mismatch")
    if hsize != HEADER_SIZE or bsize != BLOCK_SIZE:
        raise FormatError(f"{where}: header size {hsize} / block size {bsize} unexpected")
    return luuid, segment


def encode_meta(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return _META_HDR.pack(META_MAGIC, META_VERSION, 0, len(raw), crc32c.crc32c(raw)) + raw


def decode_meta(buf: bytes, where: str = "replica.meta") -> dict[str, Any]:
    if len(buf) < _META_HDR.size:
        raise FormatError(f"{where}: truncated ({len(buf)} bytes)")
    magic, version, _flags, length, crc = _META_HDR.unpack_from(buf, 0)
    if magic != META_MAGIC:
        raise FormatError(f"{where}: bad magic {magic!r}, expected {META_MAGIC!r}")
    if version not in META_VERSIONS_READ:
        raise FormatError(f"{where}: format version {version} not readable")
    body = buf[_META_HDR.size : _META_HDR.size + length]
    if length > META_MAX_BODY or len(body) != length:
        raise FormatError(f"{where}: body length {length}, found {len(body)} bytes")
    if crc32c.crc32c(body) != crc:
        raise FormatError(f"{where}: body checksum mismatch")
    try:
        out = json.loads(body)
    except ValueError as e:
        raise FormatError(f"{where}: body is not JSON: {e}") from None
    if not isinstance(out, dict):
        raise FormatError(f"{where}: body is not a JSON object")
    return out


def new_uuid() -> bytes:
    return _uuid.uuid4().bytes
