"""Packs: the objects that hold blobs, ~16-32 MiB each (``packs/xx/<id>``).

Layout: the 8-byte header (kind ``P``), the blobs one after the other (each a 12-byte nonce
and its AES-256-GCM ciphertext with tag), a sealed trailer listing every blob (chunk id, kind,
flags, offset, stored and raw length), and the trailer's length as the last 4 bytes. A pack
describes itself, so the index can be rebuilt from the packs alone (repair, verify).
The writer builds packs with ``PackBuilder``; verify and repair read them with ``read_trailer``.
"""

from __future__ import annotations

import os

from cargohold.backup import format as fmt
from cargohold.backup.keys import RepoKeys
from cargohold.errors import FormatError

PACK_BYTES = 24 << 20  # a pack is sealed once its blobs pass this size (at most one cell more)
PACK_BLOBS = 8192  # ... or once it holds this many blobs (bounds the trailer: 384 KiB)
PREFIX = "packs/"


def new_pack_name() -> str:
    pid = os.urandom(16).hex()
    return f"{PREFIX}{pid[:2]}/{pid}"


class PackBuilder:
    """Builds one pack in a reusable buffer: blobs are encrypted straight into it, and
    ``seal()`` appends the trailer and gives a view of the object's bytes. The buffer goes
    back to the writer's pool once the upload of that view is done."""

    def __init__(self, buf: bytearray | None = None) -> None:
        self.name = new_pack_name()
        self.buf = buf if buf is not None else bytearray(1 << 20)
        self.buf[: fmt.HEADER_SIZE] = fmt.header(fmt.KIND_PACK)
        self.size = fmt.HEADER_SIZE
        self.entries: list[fmt.PackEntry] = []

    def _room(self, n: int) -> None:
        if self.size + n > len(self.buf):
            self.buf.extend(bytes(max(n, len(self.buf) // 2)))

    def add(
        self, keys: RepoKeys, chunk: bytes, flags: int, raw: int, payload: bytes | memoryview
    ) -> fmt.Location:
        n = fmt.NONCE + len(payload) + fmt.TAG
        self._room(n)
        with memoryview(self.buf) as mv:
            keys.seal_blob_into(chunk, flags, payload, mv[self.size : self.size + n])
        entry = fmt.PackEntry(chunk, fmt.BLOB_DATA, flags, self.size, n, raw)
        self.entries.append(entry)
        self.size += n
        return fmt.Location(self.name, entry.offset, entry.length, raw, flags)

    def seal(self, keys: RepoKeys) -> memoryview:
        trailer = keys.seal(fmt.KIND_PACK, self.name, fmt.encode_pack_entries(self.entries))
        tail = trailer + fmt.PACK_TAIL.pack(len(trailer))
        self._room(len(tail))
        self.buf[self.size : self.size + len(tail)] = tail
        self.size += len(tail)
        return memoryview(self.buf)[: self.size]


def read_trailer(keys: RepoKeys, name: str, data: bytes) -> list[fmt.PackEntry]:
    """The entries of a whole pack object ``data`` (checked; FormatError/ChecksumError)."""
    fmt.check_header(data, fmt.KIND_PACK, name)
    if len(data) < fmt.HEADER_SIZE + fmt.PACK_TAIL.size:
        raise FormatError(f"pack {name}: truncated", object=name)
    (tl,) = fmt.PACK_TAIL.unpack_from(data, len(data) - fmt.PACK_TAIL.size)
    start = len(data) - fmt.PACK_TAIL.size - tl
    if start < fmt.HEADER_SIZE:
        raise FormatError(f"pack {name}: trailer length {tl} does not fit", object=name)
    payload = keys.open(fmt.KIND_PACK, name, data[start : len(data) - fmt.PACK_TAIL.size])
    return fmt.decode_pack_entries(payload, name, start)
