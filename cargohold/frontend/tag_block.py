"""One cached tag block of an encrypted volume and the state of its writes (the encrypting
device's tag cache, ``encrypted_device.py``; docs/encryption.md).

The cached copy is authoritative while the engine runs: every change is made to ``data``
in memory (``applied`` counts them), and each write of the block sends a *snapshot* of it
taken at the moment it is queued (``snapshot``), so a snapshot queued later holds every
change made before it. Several may be in flight at once: every replica applies them in the
order they were queued (``Volume.write_ordered``, the replica's ordered sessions), so the
newest queued lands last. ``written`` is the number of changes the replicas acknowledged,
``queued`` the number the newest snapshot queued holds: a write whose change it holds
need not queue one of its own before its data (``EncryptedDevice._write_ordered``).

Retirement: ``acked`` are the blocks (0..63) whose newest slot's data the replicas
acknowledged; their older slot is retired in the next snapshot (``retire_older``), which
is queued after that acknowledgement: a replay of the previous version stops
authenticating then, and never before the newer data is on the replicas.
"""

from __future__ import annotations

import asyncio

from cargohold.encryption.block_cipher import retire_older


class TagBlock:
    """One cached tag block and its writes."""

    __slots__ = (
        "_done", "acked", "applied", "data", "error", "queued", "stale", "writing", "written",
    )  # fmt: skip

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytearray(data)
        self.applied = 0  # changes made in memory
        self.written = 0  # changes the replicas acknowledged
        self.queued = 0  # changes the newest snapshot queued holds
        self.writing = 0  # writes of it in flight
        self._done: asyncio.Event | None = None  # ``done``'s, made when first waited for
        self.acked: set[int] = set()  # blocks (0..63) whose newest slot's data is written
        self.error: BaseException | None = None  # the last failed write's
        self.stale = False  # a write of it failed: the replicas may hold either version

    @property
    def done(self) -> asyncio.Event:
        """Set after the next write of it ends (then replaced). Made only when asked for:
        most writes end with nobody waiting, and an Event per write cost more than the
        rest of ``ended``."""
        if self._done is None:
            self._done = asyncio.Event()
        return self._done

    @property
    def busy(self) -> bool:
        return bool(self.writing) or self.applied != self.written

    def snapshot(self) -> tuple[int, bytes]:
        """Start a write of it: the acknowledged blocks' older slots retired, -> (the
        changes it holds, its bytes). ``written`` after it ends (``ended``)."""
        for j in self.acked:
            retire_older(self.data, j)
        self.acked.clear()
        self.writing += 1
        self.error = None
        self.queued = self.applied
        return self.applied, bytes(self.data)

    def ended(self, upto: int, error: BaseException | None) -> bool:
        """A write started by ``snapshot`` (holding ``upto`` changes) ended; waiters are
        woken. -> True when the cached copy must be dropped (read again next time): a
        write of it failed, and none is in flight any more."""
        self.writing -= 1
        if error is None:
            self.written = max(self.written, upto)
        else:
            self.error = error
            self.stale = True
        done, self._done = self._done, None
        if done is not None:
            done.set()
        return self.stale and not self.writing
