"""Leases: ``locks/<kind>-<id>`` objects that tell GC a backup or restore is running.

A lease is a sealed object holding its kind, its id, the host and pid that hold it and its
expiry (unix time). The holder renews it (rewrites it with a later expiry) every third of its
TTL from a daemon thread, and deletes it when done. A holder that dies stops renewing; its
lease expires and GC goes on without it. GC's rules (gc.py) say how it honours leases.

A *pin* (kind ``dr``) is a lease that names backups: a standby volume in another cluster
(docs/disaster-recovery.md) rewrites its pin on every poll with the backups it has applied
and is applying, and ``Repository.delete`` refuses to delete a pinned backup (so the source's
retention skips it). Pins do not hold GC's sweep back: what they protect stays referenced by
its manifest; a running apply's chunks are protected by its reader's ``restore`` lease.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from cargohold.backup import format as fmt
from cargohold.backup.keys import RepoKeys
from cargohold.backup.targets import Target
from cargohold.errors import CargoholdError, FormatError, InvalidArgument, NotFound

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
    backups: tuple[str, ...] = ()  # a pin's backups (kind "dr")

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
                tuple(str(b) for b in doc.get("backups", ())),
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
        self._owner: weakref.ref[object] | None = None
        self.error: CargoholdError | None = None

    def bind(self, owner: object) -> None:
        """Renew only while ``owner`` lives: a writer or reader dropped without commit, abort
        or close (its caller failed) lets its lease expire instead of holding GC back forever."""
        self._owner = weakref.ref(owner)

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
            if self._owner is not None and self._owner() is None:
                log.info("lease %s: its holder is gone; letting it expire", self.name)
                return
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
    """Every lease in the target (a LIST: GC and verify only), and the names of those that
    are there but cannot be read (GC counts them as alive: it never guesses)."""
    out, bad = [], []
    for name in target.list(PREFIX):
        try:
            out.append(LeaseRecord.decode(name, keys.open(fmt.KIND_LEASE, name, target.get(name))))
        except NotFound:
            continue  # released meanwhile
        except CargoholdError:
            bad.append(name)
    return out, bad


def pin_name(holder: str) -> str:
    """The lease object of a pin held by ``holder`` (any string: a standby's uid)."""
    return f"{PREFIX}dr-{hashlib.sha256(holder.encode()).hexdigest()[:32]}"


def put_pin(target: Target, keys: RepoKeys, holder: str, backups: list[str], ttl: float) -> str:
    """Write (or rewrite) ``holder``'s pin on ``backups``, valid ``ttl`` seconds: one PUT."""
    if not ttl > 0:
        raise InvalidArgument(f"pin TTL must be positive, not {ttl}")
    name = pin_name(holder)
    now = time.time()
    doc: dict[str, Any] = {
        "kind": "dr",
        "id": name[len(PREFIX) + 3 :],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "created": now,
        "expires": now + ttl,
        "backups": sorted(set(backups)),
        "holder": holder,
    }
    target.put(name, keys.seal(fmt.KIND_LEASE, name, fmt.encode_json(doc)))
    return name


def pinned(target: Target, keys: RepoKeys, skew: float) -> dict[str, list[str]]:
    """Backup id -> the pins (lease names) on it that are unexpired (+ ``skew``). A LIST:
    called on delete, never on a poll. A pin that cannot be read pins nothing it can name;
    it is reported under the key ``"?"``."""
    now = time.time()
    out: dict[str, list[str]] = {}
    records, bad = read_leases(target, keys)
    for r in records:
        if r.kind == "dr" and r.expires + skew > now:
            for b in r.backups:
                out.setdefault(b, []).append(r.name)
    if bad:
        out["?"] = bad
    return out
