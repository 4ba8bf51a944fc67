"""The NBD frontend's span locks (``frontend/nbd_transmission.py``): a write started
without a task (``try_acquire``) holds its span shared like an awaited aligned write, so a
read-modify-write over the same blocks waits for it, and while a read-modify-write holds
a span nothing is started without waiting (the caller takes the task path)."""

from __future__ import annotations

import asyncio

from cargohold.frontend.nbd_transmission import SpanLocks


async def test_a_taskless_write_holds_its_span_until_released() -> None:
    locks = SpanLocks()
    token = locks.try_acquire(0, 4096)
    assert token is not None and locks.held == 1
    assert locks.try_acquire(0, 4096) is not None  # shared: writes never wait for writes
    rmw = asyncio.get_running_loop().create_task(locks.acquire(0, 8192, True))
    await asyncio.sleep(0.02)
    assert not rmw.done()  # the read-modify-write waits for the shared holders
    locks.release(token)
    locks.release(1)
    ex = await asyncio.wait_for(rmw, 5)
    assert locks.try_acquire(1 << 20, (1 << 20) + 4096) is None  # an exclusive is held
    locks.release(ex)
    assert locks.try_acquire(0, 4096) is not None
