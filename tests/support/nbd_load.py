"""A small NBD load generator for QoS tests: a real NBD client (the sans-I/O
``protocol.nbd_client`` over an asyncio socket) that keeps ``depth`` requests in flight for
``seconds``, each with its own deadline, and records when each one completed.

Unlike fio it gives every request a timeout (a client whose request takes longer than
``timeout`` counts it as timed out, as the kernel's NBD client would fail it) and reports
completion times, so a test can measure the rate in any window."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cargohold.protocol import nbd_client


@dataclass
class Load:
    done: list[float] = field(default_factory=list)  # monotonic completion times
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0
    started: float = 0.0

    def rate(self, lo: float, hi: float, cost: int = 1) -> float:
        """Requests (x cost) per second completed in [started + lo, started + hi)."""
        n = sum(1 for t in self.done if self.started + lo <= t < self.started + hi)
        return n * cost / (hi - lo)


async def run_load(
    port: int,
    name: str,
    *,
    depth: int,
    seconds: float,
    size: int = 4096,
    write: bool = False,
    span: int = 64 << 20,
    timeout: float = 5.0,
    host: str = "127.0.0.1",
    until: Callable[[], bool] | None = None,
) -> Load:
    """``until``: stop early once it returns True (checked before each request)."""
    reader, writer = await asyncio.open_connection(host, port)
    c = nbd_client.ClientConnection(name)
    while c.ready is None:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the server closed during the handshake")
        c.feed(data)
        out = c.data_to_send()
        if out:
            writer.write(out)
    out = Load(started=time.monotonic())
    waiting: dict[int, tuple[float, asyncio.Future[int]]] = {}
    payload = bytes(size)
    rng = random.Random(1)

    async def pump() -> None:
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            for ev in c.feed(data):
                if isinstance(ev, nbd_client.Reply):
                    _, fut = waiting.pop(ev.handle)
                    if not fut.done():
                        fut.set_result(ev.error)

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < out.started + seconds and not (until and until()):
            off = rng.randrange(span // size) * size
            handle, bufs = c.write(off, payload) if write else c.read(off, size)
            fut: asyncio.Future[int] = loop.create_future()
            t0 = time.monotonic()
            waiting[handle] = (t0, fut)
            writer.writelines(bufs)
            try:
                err = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                out.timeouts += 1
                continue
            t1 = time.monotonic()
            if err:
                out.errors += 1
            out.done.append(t1)
            out.latencies.append(t1 - t0)

    reading = asyncio.create_task(pump())
    try:
        await asyncio.gather(*(worker() for _ in range(depth)))
    finally:
        reading.cancel()
        writer.close()
    return out
