"""FLUSH for a store served from an event loop: ``fdatasync`` in a thread, so I/O goes on
meanwhile, answered only when every flush already under way has finished too.

A FLUSH must cover every write completed before it. ``flush_handles`` hands over (and
clears) the store's dirty files, so a FLUSH that finds nothing new to sync may still
depend on an earlier one that is syncing its writes: it waits for it, and fails if it
failed. When it returns, the store's ``durable`` is the generation it was complete
through when the FLUSH began (``ReplicaStore.flushed``). Used by the replica server's
sessions and by the NBD frontend's local device.
"""

from __future__ import annotations

import asyncio
import contextlib

from cargohold.store.base import ReplicaStore
from cargohold.store.layer import sync_fds


class FlushGate:
    def __init__(self) -> None:
        self._running: set[asyncio.Future[None]] = set()

    async def flush(self, store: ReplicaStore) -> None:
        mark = store.durable_mark()
        earlier = list(self._running)
        fds = store.flush_handles()
        mine: asyncio.Future[None] | None = None
        if fds:
            mine = asyncio.get_running_loop().run_in_executor(None, sync_fds, fds)
            self._running.add(mine)
            mine.add_done_callback(self._running.discard)
        for fut in [*earlier, *([mine] if mine else [])]:
            await asyncio.shield(fut)
        store.flushed(mark)  # everything complete at the start is on disk

    async def drain(self) -> None:
        """Wait until no flush is under way (their errors went to their own requesters)."""
        for fut in list(self._running):
            with contextlib.suppress(Exception):
                await asyncio.shield(fut)
