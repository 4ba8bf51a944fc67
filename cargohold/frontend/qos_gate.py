"""The QoS gate in front of one NBD server: requests over the volume's limits wait here,
in one FIFO shared by all of the volume's connections, before they are taken up.

Back-pressure, never delayed replies: a request the limits do not let through yet is
queued instead of started, and a connection with ``QUEUE_PER_CONNECTION`` requests queued
stops reading from its socket (``NBDConnection._update_reading``), so the rest wait in
the client's queue. A request that was started is never held back: its reply goes out
as soon as the device answers. Nothing here times out: a queued request goes when its
tokens are there (``frontend/qos.py``), in arrival order across connections.

Unlimited (no limits set), ``limited`` is False and the connection never calls in: the
cost of QoS on the unlimited path is one attribute test per batch of requests.

The engine makes the gate (``engine/daemon.py``) and changes its limits online through
its control op ``qos`` (``configure``); ``status`` is the engine status's ``qos``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cargohold.frontend.qos import FREE, Limiter, kind_of
from cargohold.protocol import nbd

QUEUE_PER_CONNECTION = 64  # queued requests of one connection before it stops reading


class Waiter(Protocol):
    """What the gate needs of a connection (``NBDConnection``)."""

    queued: int

    def admitted(self, req: nbd.Request) -> None: ...

    def gone(self) -> bool: ...


class QosGate:
    """One volume's limits and the requests waiting for them."""

    def __init__(
        self,
        limits: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._limiter = Limiter(limits or {}, clock())
        self.limited = self._limiter.active
        self._queue: deque[tuple[Waiter, nbd.Request, int, float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.throttled_requests = 0  # requests that had to wait
        self.throttled_seconds = 0.0  # the time they waited, summed
        self.changes = 0  # configure calls that changed the limits

    @property
    def limits(self) -> dict[str, int | float]:
        return dict(self._limiter.limits)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def configure(self, limits: Mapping[str, Any]) -> dict[str, int | float]:
        """New limits, effective at once (InvalidArgument from ``qos_limits.check``); the
        queue is looked at again under them (unlimited: everything queued goes now)."""
        new = Limiter(limits, self._clock())
        if new.limits != self._limiter.limits:
            self.changes += 1
        self._limiter = new
        self.limited = new.active
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._queue:
            self._release()
        return new.limits

    def offer(self, conn: Waiter, req: nbd.Request) -> bool:
        """A request arrives; True: it may be taken up now (it was charged), False: the
        gate queued it and will hand it to ``conn.admitted`` when its time comes."""
        kind = kind_of(req.cmd)
        now = self._clock()
        if not self._queue:
            if kind == FREE or self._limiter.wait(kind, now) <= 0.0:
                self._limiter.take(kind, req.length)
                return True
        self._queue.append((conn, req, kind, now))
        conn.queued += 1
        if self._timer is None:
            self._schedule(now)
        return False

    def _schedule(self, now: float) -> None:
        if not self._queue:
            return
        _, _, kind, _ = self._queue[0]
        wait = self._limiter.wait(kind, now) if kind != FREE else 0.0
        self._timer = asyncio.get_running_loop().call_later(max(wait, 0.0), self._release)

    def _release(self) -> None:
        """Hand on every queued request whose tokens are there, in order."""
        self._timer = None
        now = self._clock()
        lim = self._limiter
        q = self._queue
        while q:
            conn, req, kind, since = q[0]
            if kind != FREE and lim.active and lim.wait(kind, now) > 0.0:
                break
            q.popleft()
            conn.queued -= 1
            if conn.gone():  # its client went away: the request is dropped, costs nothing
                continue
            if kind != FREE:
                lim.take(kind, req.length)
                self.throttled_requests += 1
                self.throttled_seconds += now - since
            conn.admitted(req)
        if q:
            self._schedule(now)

    def status(self) -> dict[str, Any]:
        """The engine status's ``qos``: limits, queue and the counters (for metrics)."""
        return {
            "limits": self.limits,
            "queued": len(self._queue),
            "throttled_requests_total": self.throttled_requests,
            "throttled_seconds_total": round(self.throttled_seconds, 6),
        }
