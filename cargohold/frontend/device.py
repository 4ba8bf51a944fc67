"""The contract between a frontend (the NBD server) and what it serves.

The volume engine keeps this contract with replication behind it; ``LocalDevice`` keeps it
with one in-process replica store. Offsets and lengths are bytes; the frontend only passes
ranges that are inside ``size`` and aligned to ``block_size`` (it read-modify-writes for
clients that send unaligned requests). Failures are ``cargohold.errors.RequestError``
subclasses: the frontend answers the request with the error's ``errno`` and goes on.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

STATE_HOLE = 1  # NBD base:allocation: not allocated
STATE_ZERO = 2  # reads as zeros


@runtime_checkable
class BlockDevice(Protocol):
    @property
    def size(self) -> int:
        """Bytes; may grow while served (online expansion), never shrinks."""

    @property
    def block_size(self) -> int:
        """The block every request is aligned to (4096)."""

    @property
    def read_only(self) -> bool: ...

    @property
    def can_multi_conn(self) -> bool:
        """True when FLUSH on one connection covers writes completed on every other."""

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview: ...

    # Optional: ``read_now(offset, length) -> bytes | bytearray | memoryview | None``, a
    # read answered at once without awaiting anything, or None (then ``read`` is awaited).
    # It never raises. The NBD server calls it for aligned reads, without a task each.
    # Optional: ``write_nowait(offset, data, fua, done) -> bool``, a write started without
    # awaiting anything: ``done(None)`` or ``done(error)`` is called from the event loop when
    # it is over, never before it returns; False: nothing was started (then ``write`` is
    # awaited). The NBD server calls it for aligned writes, without a task each.

    async def write(self, offset: int, data: memoryview, fua: bool) -> None: ...

    async def flush(self) -> None:
        """Every write completed before the call is durable when it returns."""

    async def trim(self, offset: int, length: int) -> None: ...

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        """The range reads as zeros afterwards (fast: space may be released)."""

    async def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(length, STATE_HOLE|STATE_ZERO flags) runs from ``offset``; they cover at least
        one block and at most ``length`` bytes."""
