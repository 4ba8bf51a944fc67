"""The agent's fair sharing of a node (agent/fair_share.py ``NodeShare``, with a node
latency target) run live against real engines, without an agent: what
``Engines.share_node`` does, in a thread — once every ``every`` seconds, each engine's
status over its control socket, ``NodeShare.divide``, and the limits it gives pushed
through the engine's control op ``qos`` (a volume's own ``max_iops`` still holds, as in
``EngineProcess.wanted_qos``). Used by benchmarks/qos.py (phase ``protected``) and
tests/integration/test_qos_latency_target.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from cargohold.agent.fair_share import NodeShare
from cargohold.agent.latency_target import LatencyTarget
from tests.support.engine import EngineProc


class LiveShare:
    """``engines``: volume -> (its engine, its QoS settings: weight, min_iops, max_iops);
    ``target_us``: the node latency target (0: none); ``budget``: node_iops (inf: none).
    ``history``: one row a look — time, budget, the window's mean service latency (µs),
    the node's IOPS and the limits given."""

    def __init__(
        self,
        engines: Mapping[str, tuple[EngineProc, Mapping[str, Any]]],
        target_us: float,
        budget: float = math.inf,
        every: float = 1.0,
    ) -> None:
        self.engines = dict(engines)
        self.policy = NodeShare(budget, target=LatencyTarget(target_us) if target_us else None)
        self.every = every
        self.history: list[dict[str, Any]] = []
        self.pushed: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-share", daemon=True)

    def start(self) -> LiveShare:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking, and give every engine its own limits back."""
        self._stop.set()
        self._thread.join(timeout=self.every + 10)
        for eng, qos in self.engines.values():
            eng.ctl(op="qos", limits=_own(qos))

    def step(self) -> None:
        seen = {v: (qos, eng.ctl(op="status")) for v, (eng, qos) in self.engines.items()}
        fair = self.policy.divide(time.monotonic(), seen)
        limits: dict[str, Any] = {}
        for volume, (eng, qos) in self.engines.items():
            want = _own(qos)
            share = fair[volume].iops
            if share is not None:
                want["max_iops"] = min(int(want.get("max_iops") or share), share)
            if want != self.pushed.get(volume):
                eng.ctl(op="qos", limits=want)
                self.pushed[volume] = want
            limits[volume] = want.get("max_iops")
        t = self.policy.target
        self.history.append(
            {
                "at": round(time.monotonic(), 3),
                "budget": None if t is None or math.isinf(t.budget) else round(t.budget),
                "latency_us": None if t is None or t.latency_us is None else round(t.latency_us),
                "node_iops": None if t is None else round(t.did),
                "limits": limits,
            }
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.step()
            except Exception as e:  # an engine that did not answer: try again next look
                self.errors.append(f"{type(e).__name__}: {e}")


def _own(qos: Mapping[str, Any]) -> dict[str, Any]:
    """A volume's own limits (max_iops and the like; not weight or min_iops)."""
    return {k: v for k, v in qos.items() if k.startswith("max_") or k == "burst_seconds"}
