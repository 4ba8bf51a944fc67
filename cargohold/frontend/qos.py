"""Per-volume QoS as token buckets: what a request costs and when it may go. Pure: the
clock is passed in (``now``, seconds, monotonic), nothing here sleeps or does I/O.

``Limiter`` holds one ``TokenBucket`` per limit that is set (``cargohold.qos_limits``:
read, write and total IOPS; read, write and total bytes/s). A READ costs its read buckets
and the total ones, a WRITE its write buckets and the total ones; a TRIM or WRITE_ZEROES
costs one write op and no bytes; FLUSH, BLOCK_STATUS and CACHE cost nothing. The cost in
ops is one per started 256 KiB (``qos_limits.OP_BYTES``), so a large request cannot
dodge an IOPS limit.

Buckets may go into debt: a request may go when every bucket it draws on holds at least
zero tokens, and then takes its whole cost, so a request larger than the bucket still
goes, and the long-run rate is exactly the limit. A bucket holds at most ``burst_seconds``
of its rate (at least ``MIN_BURST_SECONDS``, the slack that keeps timer lateness from
losing tokens) and starts full: an idle volume may burst that much above its limit.

The asyncio side (a bounded FIFO in front of the NBD connections, the timer, the
counters) is ``frontend/qos_gate.py``; tests/unit/frontend/test_qos.py checks the rates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cargohold.protocol import nbd
from cargohold.qos_limits import OP_BYTES, check

MIN_BURST_SECONDS = 0.01
EPSILON = 1e-6  # tokens: a debt this small is float rounding after waiting exactly

READ, WRITE, OTHER_WRITE, FREE = 0, 1, 2, 3  # the kinds of request, by what they cost
_KIND = {
    nbd.CMD_READ: READ,
    nbd.CMD_WRITE: WRITE,
    nbd.CMD_TRIM: OTHER_WRITE,
    nbd.CMD_WRITE_ZEROES: OTHER_WRITE,
}


def kind_of(cmd: int) -> int:
    return _KIND.get(cmd, FREE)


def ops_for(nbytes: int) -> int:
    """The cost in ops of a request of ``nbytes``: one per started ``OP_BYTES``."""
    return max(1, -(-nbytes // OP_BYTES))


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` held; may go into debt."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = self.capacity  # starts full
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the bucket is out of debt (0: it is now)."""
        self.refill(now)
        return 0.0 if self.tokens >= -EPSILON else -self.tokens / self.rate

    def take(self, amount: float) -> None:
        self.tokens -= amount


class Limiter:
    """The buckets of one volume's limits (``qos_limits.check``'s canonical dict)."""

    def __init__(self, limits: Mapping[str, Any], now: float) -> None:
        self.limits = check(limits)
        burst = max(float(self.limits.get("burst_seconds", 0.0)), MIN_BURST_SECONDS)

        def bucket(name: str) -> TokenBucket | None:
            rate = self.limits.get(name)
            return TokenBucket(rate, rate * burst, now) if rate else None

        iops, bw = bucket("max_iops"), bucket("max_bandwidth")
        r_iops, r_bw = bucket("max_read_iops"), bucket("max_read_bandwidth")
        w_iops, w_bw = bucket("max_write_iops"), bucket("max_write_bandwidth")
        # per kind: (buckets charged in ops, buckets charged in bytes)
        self._ops = {
            READ: [b for b in (iops, r_iops) if b],
            WRITE: [b for b in (iops, w_iops) if b],
            OTHER_WRITE: [b for b in (iops, w_iops) if b],
            FREE: [],
        }
        self._bytes = {
            READ: [b for b in (bw, r_bw) if b],
            WRITE: [b for b in (bw, w_bw) if b],
            OTHER_WRITE: [],
            FREE: [],
        }
        self.active = any(self._ops.values()) or any(self._bytes.values())

    def wait(self, kind: int, now: float) -> float:
        """Seconds from ``now`` before a request of ``kind`` may go (0: it may go now)."""
        w = 0.0
        for b in self._ops[kind]:
            w = max(w, b.wait(now))
        for b in self._bytes[kind]:
            w = max(w, b.wait(now))
        return w

    def take(self, kind: int, nbytes: int) -> None:
        """Charge a request that goes now (after ``wait`` said 0)."""
        if kind == OTHER_WRITE:
            nbytes = 0
        ops = ops_for(nbytes)
        for b in self._ops[kind]:
            b.take(ops)
        for b in self._bytes[kind]:
            b.take(nbytes)
