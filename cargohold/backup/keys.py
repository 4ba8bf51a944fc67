"""The repository's keys and its crypto construction (the sole trust boundary of a repository).

- The user keeps a 32-byte key. It never touches data: HKDF-SHA256 (salt = the repository
  id, info ``cargohold-backup wrap``) turns it into a key-wrapping key, which seals the
  repository's random 32-byte master key with AES-256-GCM in ``keys/master``.
- From the master key HKDF-SHA256 derives the data key (info ``cargohold-backup data``; every
  blob and every sealed object is AES-256-GCM with a random 96-bit nonce) and the chunk-id key
  (info ``cargohold-backup chunk-id``; chunk id = keyed BLAKE2b-256 of the chunk's plaintext,
  so equal data deduplicates without the ids revealing content to whoever holds the store).
- Associated data binds every ciphertext to its place: a sealed object to its header and its
  object name; a blob to its kind, flags and chunk id. A blob moved, swapped or tampered with
  fails authentication.

Called by the repository, writer, reader, GC and verify; pure functions of bytes, no I/O.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cargohold.backup import format as fmt
from cargohold.errors import ChecksumError, FormatError, InvalidArgument, PermissionDenied

KEY_SIZE = 32
KEY_OBJECT = "keys/master"


def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def check_user_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise InvalidArgument(
            f"a repository key is {KEY_SIZE} bytes, got {len(key) if isinstance(key, bytes | bytearray) else type(key).__name__}"
        )
    return bytes(key)


def wrap_master(user_key: bytes, master: bytes, preamble: dict[str, Any]) -> bytes:
    """The key object: header, preamble (plaintext JSON, authenticated), nonce, wrapped key."""
    repo = str(preamble["repository"]).encode()
    head = fmt.header(fmt.KIND_KEYS)
    pre = fmt.encode_json(preamble)
    aad = head + struct.pack("<I", len(pre)) + pre
    nonce = os.urandom(fmt.NONCE)
    wrap = AESGCM(hkdf(check_user_key(user_key), repo, b"cargohold-backup wrap"))
    return aad + nonce + wrap.encrypt(nonce, master, aad)


def read_preamble(data: bytes, name: str = KEY_OBJECT) -> tuple[dict[str, Any], int]:
    fmt.check_header(data, fmt.KIND_KEYS, name)
    if len(data) < fmt.HEADER_SIZE + 4:
        raise FormatError(f"key object {name}: truncated", object=name)
    (pl,) = struct.unpack_from("<I", data, fmt.HEADER_SIZE)
    end = fmt.HEADER_SIZE + 4 + pl
    if end + fmt.NONCE + KEY_SIZE + fmt.TAG != len(data):
        raise FormatError(f"key object {name}: {len(data)} bytes, bad layout", object=name)
    pre = fmt.decode_json(data[fmt.HEADER_SIZE + 4 : end], f"key object {name}")
    if not isinstance(pre.get("repository"), str) or not pre["repository"]:
        raise FormatError(f"key object {name}: no repository id", object=name)
    return pre, end


def unwrap_master(
    user_key: bytes, data: bytes, name: str = KEY_OBJECT
) -> tuple[bytes, dict[str, Any]]:
    pre, end = read_preamble(data, name)
    wrap = AESGCM(
        hkdf(check_user_key(user_key), pre["repository"].encode(), b"cargohold-backup wrap")
    )
    nonce = data[end : end + fmt.NONCE]
    try:
        master = wrap.decrypt(nonce, data[end + fmt.NONCE :], data[:end])
    except InvalidTag:
        raise PermissionDenied(
            f"the repository key does not open {name}: wrong key for repository "
            f"{pre['repository']} (or the key object was altered)",
            object=name,
        ) from None
    return master, pre


class RepoKeys:
    """The keys derived from a repository's master key; seals and opens objects and blobs."""

    def __init__(self, master: bytes, repository: str) -> None:
        salt = repository.encode()
        self._aead = AESGCM(hkdf(master, salt, b"cargohold-backup data"))
        self._id_key = hkdf(master, salt, b"cargohold-backup chunk-id")

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE2b-256 of a chunk's plaintext (hashlib releases the GIL)."""
        return hashlib.blake2b(data, digest_size=fmt.ID_SIZE, key=self._id_key).digest()

    # --- sealed objects ------------------------------------------------------------------
    def seal(self, kind: bytes, name: str, payload: bytes) -> bytes:
        head = fmt.header(kind)
        nonce = os.urandom(fmt.NONCE)
        body = fmt.compressor(3).compress(payload)
        return head + nonce + self._aead.encrypt(nonce, body, head + name.encode())

    def open(self, kind: bytes, name: str, data: bytes) -> bytes:
        fmt.check_header(data, kind, name)
        what = fmt.KINDS[kind]
        if len(data) < fmt.HEADER_SIZE + fmt.NONCE + fmt.TAG:
            raise FormatError(f"{what} {name}: truncated ({len(data)} bytes)", object=name)
        nonce = data[fmt.HEADER_SIZE : fmt.HEADER_SIZE + fmt.NONCE]
        try:
            body = self._aead.decrypt(
                nonce, data[fmt.HEADER_SIZE + fmt.NONCE :], data[: fmt.HEADER_SIZE] + name.encode()
            )
        except InvalidTag:
            raise ChecksumError(
                f"{what} {name}: authentication failed (damaged, truncated, moved or altered)",
                object=name,
            ) from None
        return fmt.decompress(body, fmt.MAX_METADATA, f"{what} {name}")

    # --- blobs ---------------------------------------------------------------------------
    @staticmethod
    def _blob_aad(chunk: bytes, flags: int) -> bytes:
        return fmt.MAGIC + bytes([fmt.BLOB_DATA, flags]) + chunk

    def seal_blob(self, chunk: bytes, flags: int, payload: bytes | memoryview) -> bytes:
        nonce = os.urandom(fmt.NONCE)
        return nonce + self._aead.encrypt(nonce, payload, self._blob_aad(chunk, flags))

    def open_blob(self, chunk: bytes, flags: int, raw: int, blob: bytes, obj: str) -> bytes:
        """A blob's plaintext, authenticated, decompressed and checked against its chunk id."""
        bad = f"chunk {chunk.hex()} in {obj}"
        if len(blob) < fmt.NONCE + fmt.TAG:
            raise ChecksumError(f"{bad}: blob truncated", chunk=chunk.hex(), object=obj)
        try:
            payload = self._aead.decrypt(
                blob[: fmt.NONCE], blob[fmt.NONCE :], self._blob_aad(chunk, flags)
            )
        except InvalidTag:
            raise ChecksumError(
                f"{bad}: authentication failed (damaged or altered data)",
                chunk=chunk.hex(),
                object=obj,
            ) from None
        if flags & fmt.FLAG_ZSTD:
            try:
                data = fmt.decompress(payload, fmt.CELL, bad)
            except FormatError as e:
                raise ChecksumError(f"{bad}: {e}", chunk=chunk.hex(), object=obj) from None
        else:
            data = payload
        if len(data) != raw or self.chunk_id(data) != chunk:
            raise ChecksumError(
                f"{bad}: content does not match its chunk id", chunk=chunk.hex(), object=obj
            )
        return data
