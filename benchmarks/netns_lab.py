"""Three "nodes" for the benchmarks: network namespaces joined by veth pairs and a bridge.

The fault matrix's lab (``cargohold/launcher/netns.py``, what ``cargohold up --netns`` makes):
the bridge in a namespace of its own, node i (1-3) in ``<prefix>-node-i`` with one address
that exists only inside the lab, and a fourth namespace (the lab's "manager" one) where
benchmarks/engine.py's ``engine-3-netns`` runs the engine and fio. The root namespace's
interfaces and routes are never touched. The names derive from the run's work directory, so
two runs (or a crashed one) never meet; ``stop()`` deletes exactly this lab's namespaces,
and benchmarks/engine.py calls it after every process inside has been stopped (on errors
and Ctrl-C too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from cargohold.launcher import netns

T = TypeVar("T")
NODES = 3


class BenchLab:
    def __init__(self, work: str) -> None:
        self.layout = netns.LabLayout.for_dir(work)
        netns.create(self.layout, NODES)  # removes its own leftovers first

    def node(self, i: int) -> dict[str, Any]:
        """Where replica server ``i`` (0-based) runs: ServerProc's ``prefix`` and ``host``."""
        ns = self.layout.node_ns(i + 1)
        return {"prefix": tuple(netns.exec_prefix(ns)), "host": self.layout.node_address(i + 1)}

    @property
    def engine_prefix(self) -> list[str]:
        """``ip netns exec NS``: the engine's (and its consumer's) namespace, a fourth one."""
        return netns.exec_prefix(self.layout.manager_ns)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the engine's namespace (sockets it makes stay there)."""
        return netns.call_in(self.layout.manager_ns, fn)

    def stop(self) -> None:
        netns.destroy(self.layout)

    def __repr__(self) -> str:
        return f"BenchLab({self.layout.prefix}: {NODES} nodes on {self.layout.subnet}.0/24)"
