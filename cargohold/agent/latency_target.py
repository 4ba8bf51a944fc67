"""A node latency target: the IOPS budget that the weights divide, driven by how long the
node's engines wait for their replicas (docs/qos.md, "A latency target"). Pure policy, no
I/O, like Linux's blk-iocost QoS (a latency target that scales the device's budget).

``service`` reads an engine status's cumulative service counters: requests done and
their latency summed, from the moment a request got past the QoS gate to the device's
answer (engine/io_stats.py: the gate's wait is not in them, so a throttled volume's own
queue does not look like node latency). ``LatencyTarget.step`` is an AIMD controller:
given the node's mean service latency over the last window and the IOPS its volumes did,

- above the target, the budget becomes what the node did (or the budget, if lower) less
  ``1 - DOWN`` of what the volumes held back did: contention starts at once, even with no
  configured ``node_iops``, and the cut falls on the volumes that want more than their
  share, not on a QD1 victim whose own rate fell because the node was slow (cutting it
  too would throttle it in turn — under constant violation the held volumes' part still
  goes down geometrically, and with every volume held the whole budget does);
- at or below it, while a volume is held back (it wants more than its share), the
  budget grows ``UP`` x + ``STEP``, but to no more than ``USED`` x what the node did (a
  budget the volumes do not use teaches nothing); once nobody is held back, the budget
  is lifted (``inf``): sharing stops, as without a target. While it holds a budget,
  NodeShare keeps the node shared whatever its ON/OFF thresholds say (the volumes not
  held keep headroom, so the node may do well under the budget: freeing the held one
  then put the latency back over the target a second later);
- never below ``floor``: every busy volume's guaranteed minimum, or ``FLOOR_PER_VOLUME``;
- with fewer than two busy volumes (nothing to share) it is lifted too.

``NodeShare`` (fair_share.py) feeds it once a second and divides the lower of its budget
and ``node_iops`` by weight, with the same weights, minimums and headroom as ``node_iops``
alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("read", "write", "trim", "write_zeroes")  # not FLUSH: an fdatasync, not a queue
DOWN = 0.8  # above the target: 1 - DOWN of what the held-back volumes did is cut
UP = 1.1  # at or below it: the budget grows this x ...
STEP = 50.0  # ... + this many IOPS a window
USED = 1.4  # it grows to at most this x what the node did (< 1 / fair_share.OFF)
FLOOR_PER_VOLUME = 100.0  # IOPS every busy volume keeps whatever the latency


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else 0.0


def service(status: Mapping[str, Any]) -> tuple[float, float]:
    """An engine status's cumulative (requests served, their service time summed in µs),
    over ``KINDS``: its ``latency_log2_us`` bucket counts and ``latency_sum_us``."""
    hist = status.get("latency_log2_us") or {}
    sums = status.get("latency_sum_us") or {}
    served = 0.0
    took = 0.0
    for kind in KINDS:
        buckets = hist.get(kind) if isinstance(hist, Mapping) else None
        if isinstance(buckets, Mapping):
            served += sum(_num(n) for n in buckets.values())
        if isinstance(sums, Mapping):
            took += _num(sums.get(kind))
    return served, took


def floor_for(minimums: list[float]) -> float:
    """The lowest budget for busy volumes with these ``min_iops`` (0: none): each keeps
    its minimum or ``FLOOR_PER_VOLUME``, and sharing needs two busy volumes at least."""
    per = [max(m, FLOOR_PER_VOLUME) for m in minimums]
    per += [FLOOR_PER_VOLUME] * max(0, 2 - len(per))
    return sum(per)


@dataclass
class LatencyTarget:
    """The controller of one node: ``target_us`` (> 0), its ``budget`` (IOPS; ``inf``:
    not limiting) and what it saw last (``latency_us``: the last window's mean service
    latency, None before the first window with requests; ``did``: the node's IOPS)."""

    target_us: float
    budget: float = math.inf
    latency_us: float | None = None
    did: float = 0.0

    def step(
        self,
        latency_us: float | None,
        did: float,
        floor: float,
        shared: bool = True,
        held: bool = True,
        held_did: float | None = None,
    ) -> float:
        """One window: its mean service latency (None: no request was served, nothing is
        learned and the budget stays), the IOPS the node did, the floor; ``shared``
        False (fewer than two busy volumes: nobody to share with) lifts the budget, so
        a lone volume's latency does not leave a low budget for when a second one comes;
        ``held``: a volume was held back in the window (it wants more); ``held_did``: the
        IOPS those did (None: all of ``did``). -> the budget."""
        self.did = max(0.0, did)
        if latency_us is None:
            return self.budget
        self.latency_us = latency_us
        if not shared:
            self.budget = math.inf
            return self.budget
        if latency_us > self.target_us:
            cut = (1 - DOWN) * (self.did if held_did is None else min(held_did, self.did))
            self.budget = max(floor, min(self.budget, self.did) - cut)
        elif math.isfinite(self.budget):
            grown = min(self.budget * UP + STEP, max(self.budget, USED * self.did))
            self.budget = max(floor, grown) if held else math.inf
        return self.budget


def mean_latency(served: float, took_us: float) -> float | None:
    """The window's mean service latency in µs (None: nothing served)."""
    return took_us / served if served > 0 else None
