"""A small inline SVG line of recent figures (pure): no script, no external file.

``svg(values)`` draws them left to right, scaled between 0 and their maximum, with a title
for screen readers; ``per_bucket`` counts timestamps into equal time buckets (events per
hour). Called by app.py's pages; tested in tests/unit/ui/test_sparkline.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape


def per_bucket(times: Iterable[float], end: float, bucket: float, count: int) -> list[int]:
    """How many of ``times`` fall in each of the ``count`` buckets of ``bucket`` seconds
    that end at ``end`` (oldest first); times outside are not counted."""
    out = [0] * count
    start = end - bucket * count
    for t in times:
        if start <= t < end:
            out[min(count - 1, int((t - start) // bucket))] += 1
    return out


def points(values: Sequence[float], width: int, height: int) -> list[tuple[float, float]]:
    """The polyline's points: x evenly spaced over ``width``, y from ``height`` (0) to 1 (the
    maximum; one pixel of margin for the stroke). One value: a flat line across."""
    if not values:
        return []
    top = max(max(values), 0.0)
    n = len(values)
    step = width / (n - 1) if n > 1 else 0.0
    pts = []
    for i, v in enumerate(values):
        frac = (max(v, 0.0) / top) if top > 0 else 0.0
        pts.append((round(i * step, 1), round(height - 1 - frac * (height - 2), 1)))
    if n == 1:
        pts.append((float(width), pts[0][1]))
    return pts


def svg(values: Sequence[float], label: str, width: int = 120, height: int = 24) -> str:
    """An ``<svg>`` of ``values`` with ``label`` as its accessible name; an empty list
    draws nothing but the label's box."""
    pts = points(values, width, height)
    line = " ".join(f"{x:g},{y:g}" for x, y in pts)
    title = escape(label)
    poly = (
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{line}"/>'
        if pts
        else ""
    )
    return (
        f'<svg class="sparkline" role="img" aria-label="{title}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{title}</title>{poly}</svg>'
    )
