"""A completion callback for the task-free write paths' tests.

``write_nowait`` and its kin answer through ``done(err)``: exactly once, and never before
the call that started the write has returned (a caller relies on that to finish its own
bookkeeping first). ``Done`` records each call; ``Done(started=False)`` also fails a call
that comes before the test marks the start as returned (``done.returned = True``).
"""

from __future__ import annotations

import asyncio


class Done:
    """``done``: records what it was called with, and checks it was called once."""

    def __init__(self, *, started: bool = True) -> None:
        self.returned = started
        self.calls: list[Exception | None] = []
        self.event = asyncio.Event()

    def __call__(self, err: Exception | None) -> None:
        assert self.returned, "called before the call that started the write returned"
        self.calls.append(err)
        self.event.set()

    async def wait(self, timeout: float = 5) -> Exception | None:
        await asyncio.wait_for(self.event.wait(), timeout)
        assert len(self.calls) == 1
        return self.calls[0]
