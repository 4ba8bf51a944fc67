"""A BlockDevice on one replica store in this process: one replica, no network.

For tests, for ``cargohold nbd-serve`` and to measure what the NBD layer itself costs.
Reads and writes run inline on the event loop (page-cache I/O takes microseconds, as in the
replica server); FLUSH and FUA ``fdatasync`` duplicated descriptors in a thread so that I/O
goes on meanwhile, through the same ``FlushGate`` as the replica server.
"""

from __future__ import annotations

from cargohold.constants import BLOCK_SIZE
from cargohold.frontend.device import STATE_HOLE, STATE_ZERO
from cargohold.store.base import DATA, ReplicaStore
from cargohold.store.flush_gate import FlushGate


class LocalDevice:
    """Serves ``store`` (a FileStore or a MemoryStore). Owns it: ``close`` closes it."""

    block_size = BLOCK_SIZE
    can_multi_conn = True  # one store, one cache, shared by every connection

    def __init__(self, store: ReplicaStore, read_only: bool = False) -> None:
        self.store = store
        self.read_only = read_only
        self._flushes = FlushGate()

    @property
    def size(self) -> int:
        return self.store.size

    def read_now(self, offset: int, length: int) -> bytearray | None:
        try:
            return self.store.read(offset, length)
        except Exception:  # answered by ``read``, which raises it again for the reply
            return None

    async def read(self, offset: int, length: int) -> bytearray:
        return self.store.read(offset, length)

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self.store.write(offset, data)
        if fua:
            await self.flush()

    async def trim(self, offset: int, length: int) -> None:
        self.store.trim(offset, length)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self.store.write_zeroes(offset, length)
        if fua:
            await self.flush()

    async def flush(self) -> None:
        await self._flushes.flush(self.store)

    async def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for _, n, kind in self.store.extents(offset, length):
            flags = 0 if kind == DATA else STATE_HOLE | STATE_ZERO
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + n, flags)
            else:
                out.append((n, flags))
        return out

    def close(self) -> None:
        self.store.close()
