"""Leases: ``locks/<kind>-<id>`` objects that tell GC a backup or restore is running.

A lease is a sealed object holding its kind, its id, the host and pid that hold it and its
expiry (unix time). The holder renews it (rewrites it with a later expiry) every third of its
TTL from a daemon thread, and deletes it when done. A holder that dies stops renewing; its
lease expires and GC goes on without it. GC's rules (gc.py) say how it honours leases.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cargohold.backup import format as fmt
from cargohold.backup.keys import RepoKeys
from cargohold.backup.targets import Target
from cargohold.errors import CargoholdError, FormatError, InvalidArgument

log = logging.getLogger(__name__)

PREFIX = "locks/"
KINDS = ("backup", "restore", "gc", "verify", "dr")


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    kind: str
    id: str
    host: str
    pid: int
    created: float
    expires: float

    @classmethod
    def decode(cls, name: str, payload: bytes) -> LeaseRecord:
        doc = fmt.decode_json(payload, f"lease {name}")
        try:
            rec = cls(
                name,
                str(doc["kind"]),
                str(doc["id"]),
                str(doc["host"]),
                int(doc["pid"]),
                float(doc["created"]),
                float(doc["expires"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"lease {name}: bad fields ({e})", object=name) from e
        return rec


class Lease:
    """A held lease; a context manager. ``valid()`` says whether it is certainly unexpired."""

    def __init__(self, target: Target, keys: RepoKeys, kind: str, ttl: float) -> None:
        if kind not in KINDS:
            raise InvalidArgument(f"lease kind {kind!r}: one of {', '.join(KINDS)}")
        if not ttl > 0:
            raise InvalidArgument(f"lease TTL must be positive, not {ttl}")
        self.target, self.keys, self.kind, self.ttl = target, keys, kind, float(ttl)
        self.id = uuid.uuid4().hex
        self.name = f"{PREFIX}{kind}-{self.id}"
        self.created = time.time()
        self.expires = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: CargoholdError | None = None

    def _payload(self, expires: float) -> bytes:
        doc: dict[str, Any] = {
            "kind": self.kind,
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": self.created,
            "expires": expires,
        }
        return self.keys.seal(fmt.KIND_LEASE, self.name, fmt.encode_json(doc))

    def _put(self) -> None:
        expires = time.time() + self.ttl
        self.target.put(self.name, self._payload(expires))
        self.expires = expires

    def acquire(self) -> Lease:
        self._put()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._put()
            except CargoholdError as e:  # the holder sees it through valid()
                self.error = e
                log.warning("lease %s: renewal failed: %s", self.name, e)

    def valid(self, margin: float = 0.0) -> bool:
        return time.time() + margin < self.expires

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with contextlib.suppress(CargoholdError):
            self.target.delete([self.name])
        self.expires = 0.0

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_leases(target: Target, keys: RepoKeys) -> tuple[list[LeaseRecord], list[str]]:
    """Every lease in the target (a LIST: GC and verify only), and the names it could not read."""
    out, bad = [], []
    for name in target.list(PREFIX):
        try:
            out.append(LeaseRecord.decode(name, keys.open(fmt.KIND_LEASE, name, target.get(name))))
        except CargoholdError:
            bad.append(name)
    return out, bad
