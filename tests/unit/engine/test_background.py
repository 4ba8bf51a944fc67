"""Background work yields to foreground I/O (engine/background.py): no wait when the
consumer is idle, waits while it keeps going, and never more than the cap per chunk."""

from __future__ import annotations

import asyncio
import collections
import time

from cargohold.engine.background import ForegroundYield, Pace, RateCap


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


async def test_a_jobs_own_requests_do_not_make_the_consumer_look_busy() -> None:
    c: collections.Counter[str] = collections.Counter()
    fy = ForegroundYield(c, step=0.01, most=0.5)
    c["write"] += 7  # the import's own seven writes
    fy.mine(7)
    assert not fy.busy()
    assert await fy.pause() == 0.0 and fy.yields == 0
    c["read"] += 1  # one of the consumer's
    assert fy.busy()
    assert 0 < await fy.pause() <= 0.02
    assert fy.yields == 1 and c["background_yields"] == 1 and c["background_yield_ms"] >= 10


async def test_yielding_off_never_waits() -> None:
    c: collections.Counter[str] = collections.Counter()
    fy = ForegroundYield(c, step=0.01, most=0.0)
    c["read"] += 100
    assert not fy.busy()
    assert await fy.pause() == 0.0 and c["background_yields"] == 0


async def test_the_rate_cap_holds_a_job_to_its_rate() -> None:
    cap = RateCap(10_000_000)  # 10 MB/s
    t0 = time.monotonic()
    for _ in range(5):
        await cap.spent(400_000)  # 2 MB in all: >= 0.2 s
    assert time.monotonic() - t0 >= 0.19
    free = RateCap(0)
    t0 = time.monotonic()
    for _ in range(100):
        assert await free.spent(1 << 30) == 0.0
    assert time.monotonic() - t0 < 0.1


async def test_pace_caps_then_yields_and_reports() -> None:
    c: collections.Counter[str] = collections.Counter()
    pace = Pace(c, 0, most=0.02)
    c["write"] += 3
    await pace.chunk(1 << 20, 3)  # only its own writes: no wait
    assert pace.status() == {"yields": 0, "yielded_seconds": 0.0}
    c["read"] += 1
    await pace.chunk(1 << 20, 0)
    assert pace.status()["yields"] == 1 and pace.status()["yielded_seconds"] > 0
