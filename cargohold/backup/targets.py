"""Backup targets: the object stores a backup repository lives in.

A placeholder of the interface engineer k1 builds on branch s17-lib (the Target ABC and
``open_target``); only what ``s3_target.py`` needs. On merge, k1's version of this file wins.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from urllib.parse import urlsplit

from cargohold import errors


class Target(ABC):
    """An object store; keys are '/'-separated relative names."""

    stats: dict[str, int]  # requests issued: put, get, list, delete, head

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key``; atomic: readers see all or nothing."""

    @abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes (a range of them); ``errors.NotFound`` if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete ``keys`` (batched); absent keys are fine."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``; only GC, verify and repair use it."""

    @abstractmethod
    def describe(self) -> str:
        """A URL without credentials, for messages."""


def open_target(
    url: str,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
    ca_bundle: str | None = None,
) -> Target:
    """The target a URL names: ``s3://BUCKET/PREFIX`` (``file://`` is k1's)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        # loaded by name when first asked for: s3_target builds on Target (an import here
        # would be a circle), and boto3 takes a while to import where no S3 target is used
        s3_target = importlib.import_module("cargohold.backup.s3_target")
        target: Target = s3_target.S3Target(
            parts.netloc,
            parts.path.strip("/"),
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            ca_bundle=ca_bundle,
        )
        return target
    raise errors.InvalidArgument(f"unsupported backup target URL scheme {parts.scheme!r}")
