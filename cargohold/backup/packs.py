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
PREFIX = "packs/"


def new_pack_name() -> str:
    pid = os.urandom(16).hex()
    return f"{PREFIX}{pid[:2]}/{pid}"


class PackBuilder:
    """Collects blobs for one pack; ``seal()`` gives the object's bytes and its entries."""

    def __init__(self) -> None:
        self.name = new_pack_name()
        self.parts: list[bytes] = [fmt.header(fmt.KIND_PACK)]
        self.size = fmt.HEADER_SIZE
        self.entries: list[fmt.PackEntry] = []

    def add(self, chunk: bytes, flags: int, raw: int, blob: bytes) -> fmt.Location:
        entry = fmt.PackEntry(chunk, fmt.BLOB_DATA, flags, self.size, len(blob), raw)
        self.entries.append(entry)
        self.parts.append(blob)
        self.size += len(blob)
        return fmt.Location(self.name, entry.offset, entry.length, raw, flags)

    def seal(self, keys: RepoKeys) -> bytes:
        trailer = keys.seal(fmt.KIND_PACK, self.name, fmt.encode_pack_entries(self.entries))
        return b"".join([*self.parts, trailer, fmt.PACK_TAIL.pack(len(trailer))])


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
