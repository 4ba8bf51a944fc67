"""One registry per daemon, and its text exposition.

Each daemon builds its own ``CollectorRegistry`` (never prometheus_client's global default
one: two daemons in one test process must not see each other's numbers) and registers
collectors on it: ``FamiliesCollector`` wraps a function that returns the families of the
moment (the agent's are built from the statuses it holds when Prometheus scrapes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FamiliesCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def registry(*collect: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own with a collector per function in ``collect``."""
    reg = CollectorRegistry(auto_describe=False)
    for c in collect:
        reg.register(FamiliesCollector(c))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """The text exposition format (version 0.0.4) of everything in ``reg``."""
    return generate_latest(reg)


def render_families(families: Iterable[Metric]) -> bytes:
    """The exposition of ``families`` built for one scrape (a registry of their own)."""
    fams = list(families)
    return render(registry(lambda: fams))
