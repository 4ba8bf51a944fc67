"""Fair sharing of a node's disk among its volumes (docs/qos.md, "Weights and guaranteed
minimums"). Pure policy, no I/O: ``shares`` divides a budget — IOPS, or bytes per second —
by weight with guaranteed minimums and redistributes what a volume does not use;
``NodeShare`` turns the engines' statuses, one look a second, into per-volume IOPS and
bandwidth limits (``Fair``) — or none at all when the node is not contended. The two
budgets are divided independently, each only while the node is contended for it. With a
node latency target (``latency_target.py``) the IOPS budget divided is the lower of
``node_iops`` and the one its controller keeps. The agent's engines loop (``engines.py``)
feeds it and pushes the limits through the engine's ``qos`` op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cargohold.agent.latency_target import LatencyTarget, floor_for, mean_latency, service
from cargohold.qos_limits import DEFAULT_WEIGHT, MIN_BANDWIDTH, MIN_IOPS

ON = 0.9  # the node counts as contended when its volumes do >= ON x budget ...
OFF = 0.6  # ... and stays so until they do < OFF x budget (or one volume is left busy)
HEADROOM = 1.5  # a volume not held back may grow to HEADROOM x its rate (+ GROW) a round
GROW = 50.0
GROW_BYTES = float(4 << 20)  # bytes/s: the same for bandwidth
PRESSING = 0.8  # a held volume doing >= this x its bandwidth share wants more bandwidth
BUSY = 1.0  # ops/s: a volume doing less is idle (it is not sharing the disk)


@dataclass(frozen=True)
class Claim:
    """One volume's say in the division: its weight, its guaranteed IOPS and what it would
    use (``inf``: as much as it is given)."""

    weight: float = DEFAULT_WEIGHT
    minimum: float = 0.0
    demand: float = math.inf


def shares(budget: float, claims: Mapping[str, Claim]) -> dict[str, float]:
    """``budget`` IOPS divided among ``claims``: volume k gets
    ``min(demand_k, max(minimum_k, L x weight_k))`` for the one level L at which they sum
    to the budget (water filling). So shares are proportional to the weights among the
    volumes that want more, never below a guaranteed minimum (the minimums are scaled down
    together if they alone exceed the budget), never above a volume's demand, and what one
    does not use goes to the others: the sum is ``min(budget, sum of demands)``."""
    if not claims:
        return {}
    budget = max(0.0, float(budget))
    floor = {k: min(c.minimum, c.demand) for k, c in claims.items()}
    total = sum(floor.values())
    if total >= budget:  # the guarantees alone overbook the node: scale them down
        return {k: (v * budget / total if total else 0.0) for k, v in floor.items()}
    if sum(c.demand for c in claims.values()) <= budget:
        return {k: float(c.demand) for k, c in claims.items()}

    def at(level: float) -> dict[str, float]:
        return {
            k: min(c.demand, max(c.minimum, level * max(c.weight, 1e-9))) for k, c in claims.items()
        }

    lo, hi = 0.0, 1.0
    while sum(at(hi).values()) < budget:
        hi *= 2.0
    for _ in range(200):  # bisection: the sum is continuous and non-decreasing in L
        mid = (lo + hi) / 2
        if sum(at(mid).values()) < budget:
            lo = mid
        else:
            hi = mid
        if hi - lo <= hi * 1e-12:
            break
    return at(lo)


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else 0.0


@dataclass
class _Seen:
    at: float
    ops: float
    throttled: float
    nbytes: float = 0.0
    served: float = 0.0  # requests served, and their service time in µs (latency_target.py)
    service_us: float = 0.0


@dataclass(frozen=True)
class Fair:
    """One volume's fair limits on a contended node (None: no limit of that kind)."""

    iops: int | None = None
    bandwidth: int | None = None


@dataclass
class NodeShare:
    """The node's IOPS ``budget`` (and bytes/s ``bandwidth``, 0: not shared) divided among
    its busy volumes when they contend for it.

    ``divide`` takes, for each running engine, its volume's QoS settings (the assignment's:
    ``weight``, ``min_iops``, ``max_iops``, ``max_bandwidth``) and its status; it answers
    each volume's ``Fair`` limits. A volume's rates are its read + write count's growth
    since the last step, and its read + written bytes'; a volume the gate held back since
    then (its ``throttled_requests_total`` grew, or requests wait) is taken to want more
    IOPS than it got, and more bandwidth if it also did nearly its bandwidth share. Each
    budget is divided only while the node is contended for it — at least two busy volumes,
    their total at ``ON`` x that budget (``OFF`` once contended); otherwise nobody gets a
    limit of that kind. ``min_iops`` guarantees bandwidth too: that many of the volume's
    own requests (at its average size) a second. ``step``: only the IOPS.

    ``target`` (a node latency target, latency_target.py): each step also feeds it the
    node's mean service latency and IOPS over the window, and the IOPS budget divided is
    the lower of ``budget`` and the controller's (``iops_budget``)."""

    budget: float
    bandwidth: float = 0.0
    target: LatencyTarget | None = None
    contended: bool = False
    contended_bw: bool = False
    seen: dict[str, _Seen] = field(default_factory=dict)
    given_bw: dict[str, int] = field(default_factory=dict)  # the last bandwidth shares

    def step(
        self, now: float, engines: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]
    ) -> dict[str, int | None]:
        return {v: f.iops for v, f in self.divide(now, engines).items()}

    def divide(
        self, now: float, engines: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]
    ) -> dict[str, Fair]:
        rates: dict[str, float] = {}
        byte_rates: dict[str, float] = {}
        held: dict[str, bool] = {}
        served = took = 0.0  # the window's requests and service time, node-wide
        for volume, (_qos, status) in engines.items():
            counters = status.get("counters") or {}
            q = status.get("qos") or {}
            ops = _num(counters.get("read")) + _num(counters.get("write"))
            nbytes = _num(counters.get("read_bytes")) + _num(counters.get("written_bytes"))
            throttled = _num(q.get("throttled_requests_total"))
            n, us = service(status)
            before = self.seen.get(volume)
            self.seen[volume] = _Seen(now, ops, throttled, nbytes, n, us)
            if before is None or now <= before.at or ops < before.ops or nbytes < before.nbytes:
                continue  # first look, or a restarted engine: no rate yet
            if n >= before.served and us >= before.service_us:
                served += n - before.served
                took += us - before.service_us
            rates[volume] = (ops - before.ops) / (now - before.at)
            byte_rates[volume] = (nbytes - before.nbytes) / (now - before.at)
            held[volume] = throttled > before.throttled or _num(q.get("queued")) > 0
        for gone in set(self.seen) - set(engines):
            del self.seen[gone]
        busy = [v for v, r in rates.items() if r >= BUSY or held[v]]
        if self.target is not None:  # alone, a volume is never shared: the target lets go
            floor = floor_for([_num(engines[v][0].get("min_iops")) for v in busy])
            latency = mean_latency(served, took)
            shared, wants = len(busy) >= 2, any(held[v] for v in busy)
            held_did = sum(rates[v] for v in busy if held[v])
            self.target.step(
                latency, sum(rates.values()), floor, shared=shared, held=wants, held_did=held_did
            )
        iops = self._iops(engines, busy, rates, held)
        bandwidth = self._bandwidth(engines, busy, rates, byte_rates, held)
        return {v: Fair(iops.get(v), bandwidth.get(v)) for v in engines}

    @property
    def iops_budget(self) -> float:
        """The IOPS budget divided now: ``budget``, or the latency target's if lower."""
        if self.target is None:
            return self.budget
        return min(self.budget, self.target.budget)

    def _iops(
        self,
        engines: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
        busy: list[str],
        rates: Mapping[str, float],
        held: Mapping[str, bool],
    ) -> dict[str, int]:
        total = sum(rates.values())
        budget = self.iops_budget
        # a latency target holding a budget ends sharing itself (latency_target.py: it
        # lifts the budget once nobody is held back), not by the ON/OFF thresholds: with
        # the headroom kept for the volumes not held, the node may do well under it
        targeted = self.target is not None and budget < self.budget
        if len(busy) < 2 or (not targeted and total < (OFF if self.contended else ON) * budget):
            self.contended = False
            return {}
        self.contended = True
        claims = {}
        for v in busy:
            qos = engines[v][0]
            demand = math.inf if held[v] else rates[v] * HEADROOM + GROW
            cap = qos.get("max_iops")
            if isinstance(cap, int | float) and not isinstance(cap, bool):
                demand = min(demand, float(cap))  # its own limit: it cannot use more
            claims[v] = Claim(
                weight=_num(qos.get("weight")) or DEFAULT_WEIGHT,
                minimum=_num(qos.get("min_iops")),
                demand=demand,
            )
        return {v: max(MIN_IOPS, round(x)) for v, x in shares(budget, claims).items()}

    def _bandwidth(
        self,
        engines: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
        busy: list[str],
        rates: Mapping[str, float],
        byte_rates: Mapping[str, float],
        held: Mapping[str, bool],
    ) -> dict[str, int]:
        total = sum(byte_rates.values())
        if (
            not self.bandwidth
            or len(busy) < 2
            or total < (OFF if self.contended_bw else ON) * self.bandwidth
        ):
            self.contended_bw = False
            self.given_bw.clear()
            return {}
        self.contended_bw = True
        claims = {}
        for v in busy:
            qos = engines[v][0]
            rate = byte_rates[v]
            last = self.given_bw.get(v)
            pressing = held[v] and last is not None and rate >= PRESSING * last
            demand = math.inf if pressing else rate * HEADROOM + GROW_BYTES
            cap = qos.get("max_bandwidth")
            if isinstance(cap, int | float) and not isinstance(cap, bool):
                demand = min(demand, float(cap))
            per_op = rate / rates[v] if rates[v] > 0 else 0.0  # its average request, bytes
            claims[v] = Claim(
                weight=_num(qos.get("weight")) or DEFAULT_WEIGHT,
                minimum=_num(qos.get("min_iops")) * per_op,
                demand=demand,
            )
        given = shares(self.bandwidth, claims)
        self.given_bw = {v: max(MIN_BANDWIDTH, round(x)) for v, x in given.items()}
        return dict(self.given_bw)


def latency_view(share: NodeShare | None) -> dict[str, float | None] | None:
    """The node latency target as the node's metrics show it (metrics/node_stats.py):
    ``target_us``, ``latency_us`` (the last window's mean service latency) and ``budget``
    (IOPS; inf: none held). None without a target."""
    if share is None or share.target is None:
        return None
    t = share.target
    return {"target_us": t.target_us, "latency_us": t.latency_us, "budget": t.budget}
