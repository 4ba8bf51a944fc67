"""Backup targets: the object stores a backup repository lives in.

A target stores opaque objects under '/'-separated relative keys. The repository
(backup/repository.py) is the only caller; it never asks a target to LIST on the hot path
(backup, restore, listing backups): only GC, verify and repair list.

- ``FileTarget``: a directory (a local disk, or an NFS/CIFS mount on a real node). A put
  writes a temporary file, fsyncs it, renames it into place and fsyncs the directory, so a
  reader sees the whole object or nothing, even after a crash.
- ``MemoryTarget``: the in-memory twin, for unit tests.
- ``S3Target`` (backup/s3_target.py): S3-compatible object storage, imported lazily by
  ``open_target`` so that boto3 is loaded only when an s3:// URL is used.

Every target counts the requests it issued in ``stats`` (put, get, list, delete, head).
"""

from __future__ import annotations

import errno
import importlib
import os
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from cargohold import durable
from cargohold.errors import InvalidArgument, NoSpace, NotFound, PermissionDenied, TargetError

STAT_KEYS = ("put", "get", "list", "delete", "head")


def check_key(key: str) -> str:
    """A key is a relative '/'-separated name without empty, '.' or '..' parts."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise InvalidArgument(f"bad object key {key!r}")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or "\x00" in part or "\\" in part:
            raise InvalidArgument(f"bad object key {key!r}")
    return key


class Target(ABC):
    """An object store; keys are '/'-separated relative names."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._stats_lock = threading.Lock()

    def _count(self, what: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[what] += n

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key``, atomically: readers see all of it or nothing."""

    @abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of the object (to its end when length is None).
        ``errors.NotFound`` when the object is absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object is present (a HEAD)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete the objects, batched; absent keys are fine."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted. Only GC, verify and repair call it."""

    @abstractmethod
    def describe(self) -> str:
        """A URL naming the target, without credentials, for messages."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class MemoryTarget(Target):
    """The in-memory twin of a target (unit tests only)."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._name = name or uuid.uuid4().hex[:8]

    def put(self, key: str, data: bytes | memoryview) -> None:
        check_key(key)
        self._count("put")
        blob = bytes(data)
        with self._lock:
            self.objects[key] = blob

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        self._count("get")
        with self._lock:
            blob = self.objects.get(key)
        if blob is None:
            raise NotFound(f"{self.describe()}: no object {key}", key=key)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument(f"bad range {offset}+{length} of {key}")
        end = len(blob) if length is None else offset + length
        return blob[offset:end]

    def exists(self, key: str) -> bool:
        check_key(key)
        self._count("head")
        with self._lock:
            return key in self.objects

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            check_key(key)
        if keys:
            self._count("delete", (len(keys) + 999) // 1000)
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)

    def list(self, prefix: str) -> list[str]:
        self._count("list")
        with self._lock:
            return sorted(k for k in self.objects if k.startswith(prefix))

    def describe(self) -> str:
        return f"memory://{self._name}"


class FileTarget(Target):
    """A directory: each object is a file; puts are tmp file + fsync + rename + dir fsync."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_absolute():
            raise InvalidArgument(f"a file target needs an absolute path, not {root}")
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise self._error(e, "") from e
        if not self.root.is_dir():
            raise NotFound(f"{self.describe()}: no such directory", path=str(self.root))

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _error(self, e: OSError, key: str) -> Exception:
        what = f"{self.describe()}: {key or 'directory'}"
        if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
            return NoSpace(f"{what}: no space left on the target's filesystem", key=key)
        if e.errno == errno.ENOENT:
            return NotFound(f"{what}: not found", key=key)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(f"{what}: {e.strerror}", key=key)
        return TargetError(f"{what}: {e.strerror or e}", key=key)

    def put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        self._count("put")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            durable.write_atomic(path, data)
        except OSError as e:
            raise self._error(e, key) from e

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        self._count("get")
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument(f"bad range {offset}+{length} of {key}")
        try:
            with open(path, "rb", buffering=0) as f:
                if length is None:
                    f.seek(offset)
                    return f.read()
                return os.pread(f.fileno(), length, offset)
        except OSError as e:
            raise self._error(e, key) from e

    def exists(self, key: str) -> bool:
        path = self._path(key)
        self._count("head")
        try:
            return path.is_file()
        except OSError as e:
            raise self._error(e, key) from e

    def delete(self, keys: list[str]) -> None:
        paths = [self._path(k) for k in keys]
        if keys:
            self._count("delete", (len(keys) + 999) // 1000)
        for key, path in zip(keys, paths, strict=True):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self._error(e, key) from e

    def list(self, prefix: str) -> list[str]:
        self._count("list")
        out = []
        try:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, self.root)
                for name in filenames:
                    if name.startswith("."):  # temporary files of puts under way
                        continue
                    key = name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                    if key.startswith(prefix):
                        out.append(key)
        except OSError as e:
            raise self._error(e, prefix) from e
        return sorted(out)


def open_target(
    url: str,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
    ca_bundle: str | None = None,
) -> Target:
    """The target a URL names: ``file:///path`` or ``s3://BUCKET/PREFIX``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise InvalidArgument(f"a file target is file:///absolute/path, not {url}")
        return FileTarget(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidArgument(f"an S3 target is s3://BUCKET/PREFIX, not {url}")
        # boto3 is loaded only when an s3:// target is asked for
        s3 = importlib.import_module("cargohold.backup.s3_target")
        target: Target = s3.S3Target(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint,
            access_key,
            secret_key,
            region,
            ca_bundle,
        )
        return target
    raise InvalidArgument(
        f"unknown backup target URL {url!r}: use file:///PATH or s3://BUCKET/PREFIX"
    )
