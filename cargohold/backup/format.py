"""Sans-I/O codecs of every object in a backup repository (docs/formats/backup-repository.md).

Every object starts with the same 8-byte plaintext header: magic ``CHBK``, a kind letter, the
format version and two zero bytes. What follows depends on the kind:

- a *sealed* object (catalog, manifest, index, lease, GC pending list): a 12-byte nonce and
  the AES-256-GCM ciphertext of the zstd-compressed payload, the header and the object's name
  as associated data (keys.py seals and opens; this module lays out the payloads);
- a pack: blobs, then a sealed trailer listing them, then the trailer's length;
- the key object: a JSON preamble (plaintext, authenticated) and the wrapped master key.

The decoders here never trust their input: every length, count and offset is checked, and a
bad object raises ``errors.FormatError`` naming it. Nothing here does I/O.
"""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from cargohold.errors import FormatError

MAGIC = b"CHBK"
VERSION = 1  # the version written
READ_VERSIONS = frozenset({1})  # the versions read
HEADER = struct.Struct("<4ssBH")  # magic, kind, version, reserved (0)
HEADER_SIZE = HEADER.size  # 8

# object kinds (the header's kind letter)
KIND_KEYS = b"K"
KIND_CATALOG = b"C"
KIND_MANIFEST = b"M"
KIND_INDEX = b"I"
KIND_PACK = b"P"
KIND_LEASE = b"L"
KIND_PENDING = b"G"
KINDS = {
    KIND_KEYS: "key object",
    KIND_CATALOG: "catalog",
    KIND_MANIFEST: "manifest",
    KIND_INDEX: "index",
    KIND_PACK: "pack",
    KIND_LEASE: "lease",
    KIND_PENDING: "GC pending list",
}

# blob kinds (in a pack's trailer and a blob's associated data)
BLOB_DATA = 1
# blob flags
FLAG_ZSTD = 1

BLOCK = 4096
CELL = 4 << 20  # the chunking grid: one chunk per written 4 MiB cell
NONCE = 12
TAG = 16
ID_SIZE = 32  # chunk ids: keyed BLAKE2b-256
MAX_METADATA = 1 << 30  # bound on a decompressed metadata payload

# pack trailer entry: chunk id, blob kind, flags, reserved, offset, stored length, raw length
PACK_ENTRY = np.dtype(
    [
        ("id", "V32"),
        ("kind", "<u1"),
        ("flags", "<u1"),
        ("reserved", "<u2"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("raw", "<u4"),
    ]
)
PACK_TAIL = struct.Struct("<I")  # the sealed trailer's length, the pack's last 4 bytes
# index entry: chunk id, pack number (into the index's pack table), flags, offset, lengths
INDEX_ENTRY = np.dtype(
    [
        ("id", "V32"),
        ("pack", "<u4"),
        ("flags", "<u4"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("raw", "<u4"),
    ]
)


def header(kind: bytes) -> bytes:
    return HEADER.pack(MAGIC, kind, VERSION, 0)


def check_header(data: bytes | memoryview, kind: bytes, name: str) -> None:
    """Raise FormatError unless ``data`` starts with a header of ``kind`` in a read version."""
    what = KINDS.get(kind, "object")
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{what} {name}: truncated ({len(data)} bytes)", object=name)
    magic, k, version, reserved = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError(
            f"{what} {name}: not a cargohold backup object (magic {magic!r}, expected {MAGIC!r})",
            object=name,
        )
    if k != kind:
        raise FormatError(
            f"{what} {name}: object kind {k!r}, expected {kind!r} ({what})", object=name
        )
    if version not in READ_VERSIONS:
        raise FormatError(
            f"{what} {name}: format version {version}, this cargohold reads {sorted(READ_VERSIONS)}",
            object=name,
        )
    if reserved != 0:
        raise FormatError(f"{what} {name}: reserved header bytes are not zero", object=name)


# --- zstd ---------------------------------------------------------------------------------
_local = threading.local()


def compressor(level: int = 3) -> zstandard.ZstdCompressor:
    """A per-thread compressor (zstandard's objects are not thread-safe)."""
    c = getattr(_local, f"c{level}", None)
    if c is None:
        c = zstandard.ZstdCompressor(level=level)
        setattr(_local, f"c{level}", c)
    return c


def decompress(data: bytes | memoryview, limit: int, name: str) -> bytes:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    try:
        out = d.decompress(data, max_output_size=limit)
    except zstandard.ZstdError as e:
        raise FormatError(f"{name}: bad compressed payload ({e})", object=name) from e
    if len(out) > limit:
        raise FormatError(f"{name}: payload over {limit} bytes", object=name)
    return bytes(out)


# --- JSON payloads (catalog, lease, pending list, key preamble) ------------------------------
def encode_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_json(payload: bytes, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{name}: payload is not JSON ({e})", object=name) from e
    if not isinstance(doc, dict):
        raise FormatError(f"{name}: payload is not a JSON object", object=name)
    return doc


# --- pack trailer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PackEntry:
    id: bytes
    kind: int
    flags: int
    offset: int
    length: int
    raw: int


def encode_pack_entries(entries: list[PackEntry]) -> bytes:
    arr = np.zeros(len(entries), dtype=PACK_ENTRY)
    for i, e in enumerate(entries):
        arr[i] = (e.id, e.kind, e.flags, 0, e.offset, e.length, e.raw)
    return struct.pack("<I", len(entries)) + arr.tobytes()


def decode_pack_entries(payload: bytes, name: str, body_end: int) -> list[PackEntry]:
    """The trailer's entries; each blob must lie in ``[HEADER_SIZE, body_end)``."""
    if len(payload) < 4:
        raise FormatError(f"pack {name}: trailer truncated", object=name)
    (n,) = struct.unpack_from("<I", payload)
    if len(payload) != 4 + n * PACK_ENTRY.itemsize:
        raise FormatError(
            f"pack {name}: trailer holds {n} entries in {len(payload)} bytes", object=name
        )
    arr = np.frombuffer(payload, dtype=PACK_ENTRY, count=n, offset=4)
    out = []
    for r in arr:
        e = PackEntry(
            bytes(r["id"]),
            int(r["kind"]),
            int(r["flags"]),
            int(r["offset"]),
            int(r["length"]),
            int(r["raw"]),
        )
        if e.offset < HEADER_SIZE or e.length < NONCE + TAG or e.offset + e.length > body_end:
            raise FormatError(f"pack {name}: blob {e.id.hex()} lies outside the pack", object=name)
        if e.kind != BLOB_DATA or e.flags & ~FLAG_ZSTD or e.raw > CELL:
            raise FormatError(
                f"pack {name}: blob {e.id.hex()} has a bad kind/flags/size", object=name
            )
        out.append(e)
    return out


# --- index ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """Where a chunk's blob is: pack object, offset and stored length; its flags and size."""

    pack: str
    offset: int
    length: int
    raw: int
    flags: int


def encode_index(entries: dict[bytes, Location]) -> bytes:
    packs = sorted({loc.pack for loc in entries.values()})
    number = {p: i for i, p in enumerate(packs)}
    arr = np.zeros(len(entries), dtype=INDEX_ENTRY)
    for i, (cid, loc) in enumerate(sorted(entries.items())):
        arr[i] = (cid, number[loc.pack], loc.flags, loc.offset, loc.length, loc.raw)
    head = encode_json({"packs": packs, "entries": len(entries)})
    return struct.pack("<I", len(head)) + head + arr.tobytes()


def decode_index(payload: bytes, name: str) -> dict[bytes, Location]:
    if len(payload) < 4:
        raise FormatError(f"index {name}: truncated", object=name)
    (hl,) = struct.unpack_from("<I", payload)
    if 4 + hl > len(payload):
        raise FormatError(f"index {name}: truncated", object=name)
    head = decode_json(payload[4 : 4 + hl], f"index {name}")
    packs = head.get("packs")
    n = head.get("entries")
    if (
        not isinstance(packs, list)
        or not all(isinstance(p, str) for p in packs)
        or not isinstance(n, int)
    ):
        raise FormatError(f"index {name}: bad pack table", object=name)
    if len(payload) - 4 - hl != n * INDEX_ENTRY.itemsize or n < 0:
        raise FormatError(f"index {name}: {n} entries do not fit {len(payload)} bytes", object=name)
    arr = np.frombuffer(payload, dtype=INDEX_ENTRY, count=n, offset=4 + hl)
    if n and int(arr["pack"].max()) >= len(packs):
        raise FormatError(f"index {name}: entry names a pack not in its table", object=name)
    out = {}
    for r in arr:
        out[bytes(r["id"])] = Location(
            packs[int(r["pack"])],
            int(r["offset"]),
            int(r["length"]),
            int(r["raw"]),
            int(r["flags"]),
        )
    return out


# --- manifest ---------------------------------------------------------------------------------
def encode_manifest(info: dict[str, Any], indexes: list[str], chunk_map: bytes) -> bytes:
    head = encode_json({"info": info, "indexes": indexes})
    return struct.pack("<I", len(head)) + head + chunk_map


def decode_manifest(payload: bytes, name: str) -> tuple[dict[str, Any], list[str], bytes]:
    if len(payload) < 4:
        raise FormatError(f"manifest {name}: truncated", object=name)
    (hl,) = struct.unpack_from("<I", payload)
    if 4 + hl > len(payload):
        raise FormatError(f"manifest {name}: truncated", object=name)
    head = decode_json(payload[4 : 4 + hl], f"manifest {name}")
    info, indexes = head.get("info"), head.get("indexes")
    if (
        not isinstance(info, dict)
        or not isinstance(indexes, list)
        or not all(isinstance(i, str) for i in indexes)
    ):
        raise FormatError(f"manifest {name}: bad head", object=name)
    return info, indexes, payload[4 + hl :]
