"""The engine's I/O numbers for its status and the node's metrics: requests and bytes by
op (``counters``, shared with the rest of the volume's counters), latency in power-of-two
buckets of microseconds with their sums, and reads waiting on a replica (queue depth).

The latencies are service times: a request is timed from when the device (``Volume``) is
called — after the frontend's QoS gate let it through — to the replicas' answer, so a
throttled volume's wait in its gate is not in them (that is the gate's
``throttled_seconds_total``); the agent's node latency target reads them
(agent/latency_target.py).

Cumulative and cheap: ``observe`` is one ``bit_length`` and three dictionary increments per
request. The node's agent turns them into Prometheus series (cargohold/metrics/
engine_status.py). Used by ``volume.Volume`` only.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any


class IoStats:
    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        self.latency_sum_us: collections.Counter[str] = collections.Counter()
        self.reading = 0  # reads waiting on a replica now
        # more sections of the engine's status, by name (engine/daemon.py: ``encryption``)
        self.sections: dict[str, Callable[[], dict[str, Any]]] = {}

    def observe(self, what: str, t0: float) -> None:
        """One ``what`` request done that began at ``time.perf_counter()`` ``t0``."""
        us = int((time.perf_counter() - t0) * 1e6)
        self.counters[what] += 1
        self.latency[what][us.bit_length() - 1 if us else 0] += 1  # log2 buckets of µs
        self.latency_sum_us[what] += us

    def status(self, inflight: int) -> dict[str, Any]:
        """The status's part: ``inflight`` mutations besides the reads counted here."""
        return {
            "counters": dict(self.counters),
            "latency_log2_us": {k: dict(v) for k, v in self.latency.items()},
            "latency_sum_us": dict(self.latency_sum_us),
            "inflight": inflight + self.reading,
            **{name: section() for name, section in self.sections.items()},
        }
