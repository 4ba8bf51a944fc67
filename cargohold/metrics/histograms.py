"""Latency histograms kept as power-of-two buckets of microseconds, as Prometheus buckets.

The engine and the replica server count each request's latency in bucket
``k = int(us).bit_length() - 1`` (bucket 0 also holds 0 µs): bucket k holds [2^k, 2^(k+1))
µs. That is one ``bit_length`` per request on the hot path, and cumulative. Here they
become a Prometheus histogram with the upper bounds ``LE_US`` (every other power of two,
8 µs to ~16.8 s, then +Inf): 11 series per histogram, enough for p50/p99, few enough for
thousands of volumes. A bucket k counts under the first bound >= 2^(k+1) µs.
"""

from __future__ import annotations

from collections.abc import Mapping

LE_US: tuple[int, ...] = tuple(1 << (2 * j) for j in range(2, 13))  # 16 µs .. 16.8 s


def buckets(log2_us: Mapping[int | str, int | float]) -> list[tuple[str, float]]:
    """The cumulative (le, count) pairs of power-of-two ``log2_us`` counts (keys may be
    strings: the counts came through JSON), ending with +Inf."""
    counts = [0.0] * (len(LE_US) + 1)
    for k, n in log2_us.items():
        try:
            upper = 1 << (int(k) + 1)
        except (TypeError, ValueError):
            continue
        i = next((i for i, le in enumerate(LE_US) if upper <= le), len(LE_US))
        counts[i] += float(n)
    out: list[tuple[str, float]] = []
    total = 0.0
    for le, n in zip((*LE_US, None), counts, strict=True):
        total += n
        out.append(("+Inf" if le is None else repr(le / 1e6), total))
    return out


def observe(log2_us: dict[int, int], us: int) -> None:
    """Count one latency of ``us`` microseconds (the code the daemons inline)."""
    k = us.bit_length() - 1 if us > 0 else 0
    log2_us[k] = log2_us.get(k, 0) + 1
