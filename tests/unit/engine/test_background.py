"""Background work yields to foreground I/O (engine/background.py): no wait when the
consumer is idle, waits while it keeps going, and never more than the cap per chunk."""

from __future__ import annotations

import asyncio
import collections
import time

from cargohold.engine.background import ForegroundYield


async def test_an_idle_consumer_costs_no_wait() -> None:
    c: collections.Counter[str] = collections.Counter(read=5)
    fy = ForegroundYield(c, step=0.01, most=0.2)
    t0 = time.monotonic()
    for _ in range(10):
        assert await fy.pause() == 0.0
    assert time.monotonic() - t0 < 0.1


async def test_a_busy_consumer_is_waited_for_up_to_the_cap() -> None:
    c: collections.Counter[str] = collections.Counter()
    fy = ForegroundYield(c, step=0.01, most=0.1)
    stop = False

    async def consumer() -> None:
        while not stop:
            c["write"] += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(consumer())
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    waited = await fy.pause()
    took = time.monotonic() - t0
    stop = True
    await task
    assert 0.09 <= waited <= 0.11 and took >= 0.09  # busy all along: the whole cap
    assert await fy.pause() <= 0.011  # it stopped: one look at most


async def test_a_consumer_that_stops_ends_the_wait_early() -> None:
    c: collections.Counter[str] = collections.Counter()
    fy = ForegroundYield(c, step=0.01, most=1.0)
    c["read"] += 1  # one request since the last chunk, then quiet
    waited = await fy.pause()
    assert waited <= 0.02
