"""Key providers: who holds a key-encryption key (KEK) and wraps data keys with it.

One small interface, ``KeyProvider``: ``wrap(dek, key_ref, encryption_id) -> WrappedKey``,
``unwrap(wrapped, encryption_id) -> DataKey`` and ``check(key_ref)`` (the KEK is there and
usable, before a volume is created with it). The wrapped key names its provider and KEK
(``WrappedKey.provider``, ``key_ref``): a record says which key it needs.

- ``file``: KEKs are files in a key directory the manager is configured with (``key_dir``):
  ``<key_dir>/<name>``, 32 raw bytes or 64 hex digits. In Kubernetes that directory is a
  Secret mounted into the manager's pod (each of the Secret's keys is a file; docs/keys.md).
- ``kms``: AWS KMS's API (kms.py).
- ``memory``: the in-memory twin for unit tests (KEKs in a dict).

``Keyring`` is the manager's set of providers, built from its settings. Every failure is a
``KeyUnavailable`` or ``KeyRefused`` (cargohold/errors.py) naming the key, never a crash.
Blocking (file reads, KMS calls): the manager calls these in a worker thread.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

from cargohold.errors import InvalidArgument, KeyUnavailable
from cargohold.keys.data_keys import DataKey, WrappedKey, open_sealed, parse_kek, seal

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
MAX_KEY_FILE = 4096  # a KEK file is 32 or 64(+newline) bytes: read no more than this
FILE, KMS, MEMORY = "file", "kms", "memory"


def check_key_name(name: str) -> str:
    """A KEK's name (a file in the key directory, a Secret's key): letters, digits, '.',
    '_' and '-', starting and ending with a letter or digit (so never '..' or a path)."""
    if not isinstance(name, str) or not KEY_NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(
            f"key name {name!r} is not valid: use 1-253 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


class KeyProvider(Protocol):
    name: str

    def check(self, key_ref: str) -> None:
        """KeyUnavailable unless ``key_ref`` names a usable KEK."""

    def wrap(self, dek: DataKey, key_ref: str, encryption_id: str) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, encryption_id: str) -> DataKey: ...


class _SealingProvider:
    """A provider that holds KEK bytes and wraps with data_keys.seal (AES-256-GCM)."""

    name = ""

    def kek(self, key_ref: str) -> bytes:
        raise NotImplementedError

    def describe(self, key_ref: str) -> str:
        return f"key {key_ref!r}"

    def check(self, key_ref: str) -> None:
        self.kek(key_ref)

    def wrap(self, dek: DataKey, key_ref: str, encryption_id: str) -> WrappedKey:
        return WrappedKey(self.name, key_ref, seal(self.kek(key_ref), dek, encryption_id))

    def unwrap(self, wrapped: WrappedKey, encryption_id: str) -> DataKey:
        kek = self.kek(wrapped.key_ref)
        return open_sealed(kek, wrapped.blob, encryption_id, self.describe(wrapped.key_ref))


class FileProvider(_SealingProvider):
    """KEKs in files of one directory (a mounted Kubernetes Secret in a cluster)."""

    name = FILE

    def __init__(self, key_dir: str | Path) -> None:
        self.key_dir = Path(key_dir)

    def describe(self, key_ref: str) -> str:
        return f"key {key_ref!r} ({self.key_dir / key_ref})"

    def kek(self, key_ref: str) -> bytes:
        check_key_name(key_ref)
        path = self.key_dir / key_ref
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.read(fd, MAX_KEY_FILE + 1)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise KeyUnavailable(
                f"no key-encryption key {key_ref!r}: {path} does not exist (put a 32-byte key "
                f"there, or mount the Secret holding it at {self.key_dir}; docs/keys.md)"
            ) from None
        except OSError as e:
            raise KeyUnavailable(f"key file {path} cannot be read: {e.strerror}") from None
        try:
            return parse_kek(raw, f"key file {path}")
        except ValueError as e:
            raise KeyUnavailable(str(e)) from None


class MemoryProvider(_SealingProvider):
    """The in-memory twin: KEKs in a dict (unit tests)."""

    def __init__(self, keks: dict[str, bytes] | None = None, name: str = MEMORY) -> None:
        self.name = name
        self.keks = dict(keks or {})

    def kek(self, key_ref: str) -> bytes:
        try:
            return self.keks[key_ref]
        except KeyError:
            raise KeyUnavailable(f"no key-encryption key {key_ref!r}") from None


class Keyring:
    """The manager's providers by name (``file``, ``kms``; ``memory`` in tests)."""

    def __init__(self, providers: list[KeyProvider] | None = None) -> None:
        self.providers = {p.name: p for p in providers or []}

    def get(self, name: str) -> KeyProvider:
        try:
            return self.providers[name]
        except KeyError:
            hint = {
                FILE: "start the manager with a key directory (--key-dir, "
                "CARGOHOLD_MANAGER_KEY_DIR)",
                KMS: "start the manager with a KMS endpoint or region (--kms-endpoint / "
                "--kms-region, CARGOHOLD_MANAGER_KMS_*)",
            }.get(name, "")
            raise KeyUnavailable(
                f"key provider {name!r} is not configured on this manager"
                + (f": {hint}" if hint else "")
            ) from None
