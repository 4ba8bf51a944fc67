"""An in-memory twin of the engine's ``Volume`` as the encrypting device sees it (unit
tests only): a plain BlockDevice over ``n`` replica copies in memory, every mutation to
all of them, reads from ``reader`` (``read_copies`` gives each copy), and a log of the
mutations in the order they were made (to replay a prefix of them: a crash).

``write_ordered`` models ``Volume.write_ordered`` over replicas whose sessions stop at a
failed mutation: the writes are applied in order, each logged, and the first that fails
(``fail_after``) fails the call with none after it applied: every prefix of them is a
state a replica may be left in. ``cut_copy`` (copy index, writes) cuts one copy alone
short: that copy gets only the first ``writes`` of the next ordered call (its tag block,
not its data), the others all of it, and the call fails as the engine fails a write that
fewer than ``min_replicas`` stored (``ordered = False``: no such method, as a volume
below that cannot order its writes). ``write_ordered_nowait`` is the same without a task
(``Volume.write_ordered_nowait``): applied when queued, answered by a callback."""

from __future__ import annotations

import asyncio
from typing import Any

from cargohold.frontend.device import STATE_HOLE, STATE_ZERO

BLOCK = 4096


class MemoryVolume:
    block_size = BLOCK
    read_only = False
    can_multi_conn = True

    def __init__(self, size: int, n: int = 1, delay: float = 0.0) -> None:
        self.copies = [bytearray(size) for _ in range(n)]
        self.reader = 0
        self.delay = delay  # seconds each mutation takes (lets requests overlap)
        self.log: list[tuple[str, int, bytes]] = []  # ("write" | "trim", offset, data)
        self.writes = 0
        self.flushes = 0
        self.fail_after: int | None = None  # mutations before every next one raises
        self.cut_copy: tuple[int, int] | None = None  # (copy, writes) for the next ordered
        self.ordered_calls = 0
        self.nowait_calls = 0  # ``write_ordered_nowait`` calls that started
        self.held = False  # ``write_ordered_nowait`` starts nothing

    @property
    def size(self) -> int:
        return len(self.copies[0])

    async def _mutate(self, op: str, offset: int, data: bytes) -> None:
        if self.fail_after is not None and len(self.log) >= self.fail_after:
            from cargohold.errors import ReplicaIOError

            raise ReplicaIOError("memory volume: crashed")
        if self.delay:
            await asyncio.sleep(self.delay)
        self.log.append((op, offset, data))
        for c in self.copies:
            c[offset : offset + len(data)] = data

    async def write(self, offset: int, data: Any, fua: bool) -> None:
        self.writes += 1
        await self._mutate("write", offset, bytes(data))

    async def write_ordered(self, writes: list[tuple[int, Any]], ready: Any = None) -> None:
        self.ordered_calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if ready is not None:  # the buffers are filled when they are queued
            writes = ready(True)
        self._apply_ordered(writes)

    def write_ordered_nowait(self, writes: list[tuple[int, Any]], ready: Any, done: Any) -> bool:
        """``Volume.write_ordered_nowait``: False while ``held`` (a hold, a rebuild step),
        else ``ready(True)`` and the writes applied as ``write_ordered`` applies them, at
        once (in the order they were queued), ``done`` called ``delay`` seconds later."""
        if self.held:
            return False
        self.nowait_calls += 1
        writes = ready(True)
        error: Exception | None = None
        try:
            self._apply_ordered(writes)
        except Exception as e:
            error = e
        asyncio.get_running_loop().call_later(self.delay, done, error)
        return True

    def _apply_ordered(self, writes: list[tuple[int, Any]]) -> None:
        cut, self.cut_copy = self.cut_copy, None
        for n, (offset, data) in enumerate(writes):
            if self.fail_after is not None and len(self.log) >= self.fail_after:
                from cargohold.errors import ReplicaIOError

                raise ReplicaIOError("memory volume: crashed")  # none after it applied
            self.writes += 1
            self.log.append(("write", offset, bytes(data)))
            for k, c in enumerate(self.copies):
                if cut is None or cut[0] != k or n < cut[1]:
                    c[offset : offset + len(data)] = data
        if cut is not None:
            from cargohold.errors import ReplicaIOError

            raise ReplicaIOError(f"memory volume: copy {cut[0]} cut short after {cut[1]}")

    async def trim(self, offset: int, length: int) -> None:
        await self._mutate("trim", offset, bytes(length))

    async def write_checked(self, offset: int, data: Any, fua: bool, ready: Any) -> None:
        """``Volume.write_checked``: ``ready()`` (it may raise: nothing applied), then the
        write."""
        ready()
        await self.write(offset, data, fua)

    async def trim_checked(self, offset: int, length: int, ready: Any) -> None:
        """``Volume.trim_checked``: ``ready()`` (it may raise: nothing applied), then the
        trim."""
        ready()
        await self.trim(offset, length)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self._mutate("trim", offset, bytes(length))

    async def flush(self) -> None:
        self.flushes += 1

    def read_now(self, offset: int, length: int) -> bytes | None:
        return bytes(self.copies[self.reader][offset : offset + length])

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.copies[self.reader][offset : offset + length])

    async def read_copies(self, offset: int, length: int) -> list[tuple[str, bytes]]:
        return [(f"r{k}", bytes(c[offset : offset + length])) for k, c in enumerate(self.copies)]

    async def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        c = self.copies[self.reader]
        for p in range(offset, offset + length, BLOCK):
            flags = 0 if any(c[p : p + BLOCK]) else STATE_HOLE | STATE_ZERO
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + BLOCK, flags)
            else:
                out.append((BLOCK, flags))
        return out

    def replay(self, upto: int) -> MemoryVolume:
        """A new volume holding only the first ``upto`` mutations (a crash after them)."""
        v = MemoryVolume(self.size, len(self.copies))
        for _, offset, data in self.log[:upto]:
            for c in v.copies:
                c[offset : offset + len(data)] = data
        return v
