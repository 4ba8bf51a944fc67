"""Reads of the engine's local replica straight from its files, beside its replica server.

Called by ``volume`` (``Volume.read`` and ``Volume.read_now``, which the NBD frontend calls
without a task for aligned reads). A read through the replica server costs a round trip
through two event loops and the wire; the local replica's files are on this host, so the
engine can read them itself (``store.reader``: read-only, every block checksum-verified)
and answer without waiting for anyone. Writes still go to every replica through their
servers (invariant 1); only reads take this path, and only while it is safe:

- the replica is the engine's local one, current (RW) and connected: a replica that is
  dropped, stale or being rebuilt is never read (invariant 2; ``ReplicaLink.drop`` closes
  its reader);
- the files are the ones its server serves: the server reports the directory with this
  kernel's boot id and the directory's device and inode at OPEN, and the reader must find
  the same (``host_identity``); otherwise this path stays off for that replica;
- the layer chain is the one the reader opened: the engine changes it (snapshot create,
  revert, expand, snapshot deletion), so those bump ``layout`` (the reader reopens) or
  ``pause`` this path while they run;
- no newer engine owns the replica: every ``CHECK_EVERY`` seconds the replica's metadata
  is looked at (one stat); when it changed, the reader reopens and a persisted epoch above
  this engine's turns the path off, so the next read goes to the server and learns it is
  fenced (invariant 3);
- any doubt (a checksum mismatch, which may be a write racing the read, an I/O error, a
  range beyond what the reader knows) answers None: the caller reads through the server,
  which orders reads and writes and repairs real rot from another replica (invariant 5).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from cargohold.engine.interface import VolumeCore
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.errors import CargoholdError, ChecksumError
from cargohold.store.reader import ReplicaReader, host_identity

log = logging.getLogger("cargohold.engine")

CHECK_EVERY = 0.05  # seconds between looks at the local replica's metadata
RETRY_OPEN = 5.0  # seconds before trying again to open a reader that could not be opened


class LocalReads:
    def __init__(self, vol: VolumeCore, enabled: bool = True) -> None:
        self.vol = vol
        self.enabled = enabled
        self.layout = 0  # bumped when the engine changed the replicas' layer chains
        self._paused = 0
        self._checked = 0.0
        self._link: ReplicaLink | None = None

    # --- what the engine calls around changes to the layer chain ----------------------
    def changed_layout(self) -> None:
        """The layer chain or the size changed (snapshot, revert, expand): reopen."""
        self.layout += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No local reads while the chain is being rewritten (a snapshot deletion folds
        layers online); reopened afterwards."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.layout += 1

    # --- reads ---------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes | bytearray | None:
        """The data, or None: then read through the replica server."""
        link = self._link
        if link is None or link.mode is not Mode.RW or link.client is None:
            link = self._link = self._pick()
            if link is None:
                return None
        if self._paused:
            return None
        reader = link.reader
        if reader is None or link.reader_layout != self.layout:
            reader = self._open(link)
            if reader is None:
                return None
        now = time.monotonic()
        if now - self._checked > CHECK_EVERY:
            self._checked = now
            if reader.changed():
                reader = self._open(link)
                if reader is None:
                    return None
        try:
            data = reader.read(offset, length)
        except ChecksumError:
            self.vol.counters["local_read_checksum_retries"] += 1
            return None
        except (CargoholdError, OSError, ValueError) as e:  # e.g. beyond the size it knows
            log.debug("volume %s: local read of %s failed: %s", self.vol.name, link.spec, e)
            return None
        self.vol.counters["local_reads"] += 1
        return data

    def _pick(self) -> ReplicaLink | None:
        if not self.enabled:
            return None
        for link in self.vol.links:
            if (
                link.spec.local
                and link.mode is Mode.RW
                and link.client is not None
                and link.disk is not None
                and time.monotonic() >= link.reader_retry
            ):
                return link
        return None

    def _open(self, link: ReplicaLink) -> ReplicaReader | None:
        link.close_reader()
        disk = link.disk
        assert disk is not None
        try:
            reader = ReplicaReader.open(disk["path"])
            same = reader.identity() == {k: disk.get(k) for k in ("boot_id", "dev", "ino")}
        except (CargoholdError, OSError, KeyError, TypeError, ValueError) as e:
            link.reader_retry = time.monotonic() + RETRY_OPEN
            log.info("volume %s: no local reads from %s: %s", self.vol.name, link.spec, e)
            return None
        if not same:
            reader.close()
            link.disk = None  # another host's or namespace's files: never again for this link
            log.info(
                "volume %s: no local reads from %s: %s is not the directory its server "
                "serves (%s here)",
                self.vol.name,
                link.spec,
                disk.get("path"),
                host_identity(disk["path"]),
            )
            return None
        if reader.epoch > self.vol.epoch:  # a newer engine opened it: let the server say so
            reader.close()
            link.reader_retry = time.monotonic() + RETRY_OPEN
            return None
        link.reader = reader
        link.reader_layout = self.layout
        return reader
