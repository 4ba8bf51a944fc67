"""Background work yields to foreground I/O: rebuilds, scrubs and backups call
``yield_to_foreground`` between two chunks of their work.

Each keeps its own cap (``rebuild_bandwidth``, ``scrub_bandwidth``, ``backup_rate_mb``:
settings.EngineSettings). On top of it, while the volume's consumer is doing I/O — its
read and write counters moved since the last look — the background task waits
``YIELD_STEP`` at a time, up to ``YIELD_MAX`` per chunk, so the consumer's requests find
the event loop, the replica links and the disk free; background work slows down but never
stops (a busy volume still gets its rebuild). No cost on the I/O path: it reads counters
the engine keeps anyway (``Volume._observe``). docs/qos.md, "Background work".
"""

from __future__ import annotations

import asyncio
import collections

YIELD_STEP = 0.002  # seconds: one wait while the consumer is busy
YIELD_MAX = 0.05  # seconds: at most this much waiting per chunk of background work
FOREGROUND = ("read", "write", "trim", "write_zeroes", "flush")  # the counters that move


def foreground_ops(counters: collections.Counter[str]) -> int:
    return sum(counters[k] for k in FOREGROUND)


class ForegroundYield:
    """One background job's courtesy: ``await pause()`` between two chunks."""

    def __init__(
        self, counters: collections.Counter[str], step: float = YIELD_STEP, most: float = YIELD_MAX
    ) -> None:
        self.counters = counters
        self.step = step
        self.most = most
        self.seen = foreground_ops(counters)
        self.waited = 0.0  # seconds yielded in all (the job's status may show it)

    async def pause(self) -> float:
        """No wait when the consumer did nothing since the last chunk; else wait while it
        keeps going, up to ``most`` seconds. -> the seconds waited."""
        await asyncio.sleep(0)
        now = foreground_ops(self.counters)
        waited = 0.0
        while now != self.seen and waited < self.most:
            self.seen = now
            await asyncio.sleep(self.step)
            waited += self.step
            now = foreground_ops(self.counters)
        self.seen = now
        self.waited += waited
        return waited
