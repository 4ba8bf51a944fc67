"""Background work yields to foreground I/O: rebuilds, scrubs, backups, a clone's import
and a restore call ``ForegroundYield.pause`` between two chunks of their work, and keep to
their own cap with ``RateCap``.

Each keeps its own cap (``rebuild_bandwidth``, ``scrub_bandwidth``, ``backup_rate_mb``,
``import_bandwidth``, ``restore_bandwidth``: settings.EngineSettings). On top of it, while
the volume's consumer is doing I/O — its read and write counters moved since the last look
— the background task waits ``YIELD_STEP`` at a time until they stand still for
``YIELD_QUIET``, up to ``background_yield_max``
seconds per chunk (``YIELD_MAX`` by default; 0 turns yielding off), so the consumer's
requests find the event loop, the replica links and the disk free; background work slows
down but never stops (a busy volume still gets its rebuild). No cost on the I/O path: it
reads counters the engine keeps anyway (``Volume._observe``).

A job that writes through the volume's own write path (an import, a restore) moves those
counters itself: it tells its ``ForegroundYield`` with ``mine(n)`` how many of the moves
were its own. Every pause that waited is counted in the volume's counters
(``background_yields``, ``background_yield_ms``), so a test or an operator can see how
often background work stood back for the consumer. docs/qos.md, "Background work".
"""

from __future__ import annotations

import asyncio
import collections
import time

YIELD_STEP = 0.002  # seconds: one wait while the consumer is busy
YIELD_MAX = 0.05  # seconds: at most this much waiting per chunk of background work
YIELD_QUIET = 0.01  # seconds: a consumer whose counters stood still this long is idle
# (longer than a step: a consumer at queue depth 1 has gaps between its requests)
# the counters that move while the consumer does I/O: requests done, and requests that
# found a rebuild's write window in their way (a starved consumer completes nothing)
FOREGROUND = ("read", "write", "trim", "write_zeroes", "flush", "window_waits")


def foreground_ops(counters: collections.Counter[str]) -> int:
    return sum(counters[k] for k in FOREGROUND)


class ForegroundYield:
    """One background job's courtesy: ``await pause()`` between two chunks."""

    def __init__(
        self,
        counters: collections.Counter[str],
        step: float = YIELD_STEP,
        most: float = YIELD_MAX,
        quiet: float = YIELD_QUIET,
    ) -> None:
        self.counters = counters
        self.step = step
        self.most = most
        self.quiet = quiet
        self.seen = foreground_ops(counters)
        self.waited = 0.0  # seconds yielded in all (the job's status may show it)
        self.yields = 0  # pauses that waited at least one step

    def mine(self, ops: int) -> None:
        """``ops`` of the counters' moves since the last look were the job's own requests
        (an import's or a restore's writes): they do not make the consumer look busy."""
        self.seen += ops

    def busy(self) -> bool:
        """Did the consumer do I/O since the last look? (No wait, nothing updated.)"""
        return self.most > 0 and foreground_ops(self.counters) > self.seen

    async def pause(self) -> float:
        """No wait when the consumer did nothing since the last chunk; else wait while it
        keeps going, up to ``most`` seconds. -> the seconds waited."""
        await asyncio.sleep(0)
        now = foreground_ops(self.counters)
        waited = quiet = 0.0
        if now > self.seen:  # busy since the last chunk: wait until it is quiet a while
            while waited < self.most and quiet < self.quiet:
                self.seen = now
                await asyncio.sleep(self.step)
                waited += self.step
                now = foreground_ops(self.counters)
                quiet = 0.0 if now > self.seen else quiet + self.step
        self.seen = now
        if waited:
            self.waited += waited
            self.yields += 1
            self.counters["background_yields"] += 1
            self.counters["background_yield_ms"] += round(waited * 1000)
        return waited


class RateCap:
    """A background job's own cap: ``await spent(n)`` after each chunk of ``n`` bytes
    sleeps as long as the job is ahead of ``rate`` bytes per second since it started
    (0 = no cap: returns at once)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()
        self.done = 0

    async def spent(self, nbytes: int) -> float:
        """-> the seconds slept."""
        self.done += nbytes
        if not self.rate:
            return 0.0
        ahead = self.done / self.rate - (time.monotonic() - self.t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
            return ahead
        return 0.0


class Pace:
    """Both, for a job that writes through the volume's own write path (an import, a
    restore): after each chunk, ``await chunk(nbytes, ops)`` — ``ops`` requests of its
    own, ``nbytes`` toward its cap — keeps to the cap, then yields to the consumer."""

    def __init__(
        self, counters: collections.Counter[str], rate: float, most: float = YIELD_MAX
    ) -> None:
        self.courtesy = ForegroundYield(counters, most=most)
        self.cap = RateCap(rate)

    async def chunk(self, nbytes: int, ops: int = 0) -> None:
        self.courtesy.mine(ops)
        await self.cap.spent(nbytes)
        await self.courtesy.pause()

    def busy(self) -> bool:
        return self.courtesy.busy()

    def status(self) -> dict[str, float]:
        """For the job's status: how often and how long it stood back."""
        return {"yields": self.courtesy.yields, "yielded_seconds": round(self.courtesy.waited, 3)}
