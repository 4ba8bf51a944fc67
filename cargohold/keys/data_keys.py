"""A volume's data key and its envelope: the 32 random bytes that encrypt the volume's
blocks (in its engine, cargohold/encryption/), the 16-byte encryption id bound into every
block, and the wrapping of the data key under a key-encryption key (KEK).

Wrapping (providers ``file`` and ``memory``; docs/keys.md): AES-256-GCM under the KEK, with
a random 96-bit nonce and associated data ``AAD_PREFIX || encryption id``, so a wrapped key
copied onto another volume's record does not unwrap there. The blob is

    offset  size  field
    0       1     version (1)
    1       12    nonce
    13      48    AES-GCM ciphertext of the 32-byte data key, then its 16-byte tag

A KMS wraps with its own format (its ciphertext blob, opaque) and binds the id through its
encryption context. Pure functions and frozen records; the manager's key service
(control/service_keys.py) and the providers (providers.py, kms.py) call them.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cargohold.errors import InvalidArgument, KeyRefused

DATA_KEY_BYTES = 32  # AES-256
ID_BYTES = 16  # the encryption id (hex: 32 digits)
KEK_BYTES = 32
WRAP_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_BYTES = 1 + NONCE_BYTES + DATA_KEY_BYTES + TAG_BYTES
AAD_PREFIX = b"cargohold/data-key/v1\0"
ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, repr=False)
class DataKey:
    """A clear data key, in memory only (never in a record, a log or argv)."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != DATA_KEY_BYTES:
            raise InvalidArgument(f"a data key is {DATA_KEY_BYTES} bytes, not {len(self.key)}")

    def __repr__(self) -> str:  # never the bytes
        return "DataKey(<32 bytes>)"


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by a provider's KEK: the provider's name, the KEK's reference
    (a key name, a KMS key id) and the opaque blob. What a volume's record keeps."""

    provider: str
    key_ref: str
    blob: bytes

    @property
    def b64(self) -> str:
        return base64.b64encode(self.blob).decode()

    @classmethod
    def from_b64(cls, provider: str, key_ref: str, text: str) -> WrappedKey:
        try:
            blob = base64.b64decode(text.encode(), validate=True)
        except (binascii.Error, ValueError) as e:
            raise KeyRefused(f"the wrapped data key is not base64: {e}") from None
        if not blob:
            raise KeyRefused("the wrapped data key is empty")
        return cls(provider, key_ref, blob)


def new_data_key() -> DataKey:
    return DataKey(secrets.token_bytes(DATA_KEY_BYTES))


def new_encryption_id() -> str:
    """A volume's encryption id: 16 random bytes, as 32 lowercase hex digits."""
    return secrets.token_hex(ID_BYTES)


def check_id(encryption_id: str) -> bytes:
    if not isinstance(encryption_id, str) or not ID_RE.match(encryption_id):
        raise InvalidArgument(f"an encryption id is 32 lowercase hex digits, not {encryption_id!r}")
    return bytes.fromhex(encryption_id)


def aad(encryption_id: str) -> bytes:
    return AAD_PREFIX + check_id(encryption_id)


def seal(kek: bytes, dek: DataKey, encryption_id: str) -> bytes:
    """``dek`` wrapped under ``kek`` (the blob of the module's docstring)."""
    if len(kek) != KEK_BYTES:
        raise InvalidArgument(f"a key-encryption key is {KEK_BYTES} bytes, not {len(kek)}")
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = AESGCM(kek).encrypt(nonce, dek.key, aad(encryption_id))
    return bytes([WRAP_VERSION]) + nonce + body


def open_sealed(kek: bytes, blob: bytes, encryption_id: str, what: str) -> DataKey:
    """The data key of ``blob``; KeyRefused when it does not authenticate under ``kek``
    for this encryption id (``what`` names the KEK in the message)."""
    if len(kek) != KEK_BYTES:
        raise InvalidArgument(f"a key-encryption key is {KEK_BYTES} bytes, not {len(kek)}")
    if len(blob) != WRAPPED_BYTES or blob[0] != WRAP_VERSION:
        raise KeyRefused(
            f"the wrapped data key is not a version-{WRAP_VERSION} blob of {WRAPPED_BYTES} "
            f"bytes (found {len(blob)} bytes, version {blob[0] if blob else None})"
        )
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        key = AESGCM(kek).decrypt(nonce, body, aad(encryption_id))
    except InvalidTag:
        raise KeyRefused(
            f"the data key does not unwrap under {what}: another key under that name, or a "
            "tampered record"
        ) from None
    return DataKey(key)


def parse_kek(raw: bytes, what: str) -> bytes:
    """A KEK from a key file's (or a Secret's) bytes: 32 raw bytes, or 64 hex digits (a
    trailing newline allowed). ValueError naming ``what`` otherwise."""
    if len(raw) == KEK_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEK_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise ValueError(
        f"{what} is not a key-encryption key: it holds {len(raw)} bytes; a KEK is "
        f"{KEK_BYTES} raw bytes or {2 * KEK_BYTES} hex digits (e.g. `openssl rand -hex 32`)"
    )
