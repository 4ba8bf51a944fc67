"""A simulated cluster for stepping the manager without processes.

The manager's real code (service, heartbeat, reconcilers, scheduler) over the in-memory
state store, with simulated node agents: each keeps the replicas and engines it was told
to run and reports them the way a real agent does. Time is a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cargohold.control import (
    backup_results,
    engine_reports,
    group_snapshots,
    heartbeat,
    operation_results,
    reconcilers,
    repository,
    service_backups,
    service_base,
    service_groups,
    service_nodes,
    service_volumes,
)
from cargohold.control.model import (
    Assignments,
    DiskReport,
    EngineReport,
    Heartbeat,
    OperationAssignment,
    OperationReport,
    OperationState,
    Registration,
    ReplicaReport,
)
from cargohold.control.repository import Repository
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import open_store


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class SimEngine:
    epoch: int
    replicas: list[str]  # ids
    generation: int = 0
    down: set[str] = field(default_factory=set)  # replica ids the engine dropped (ERR)
    errors: dict[str, str] = field(default_factory=dict)  # why (a dropped replica's error)
    scrub_last: dict | None = None  # type: ignore[type-arg]  # its status's scrub.last
    last_scrub_at: float = 0.0  # what its assignment said when it started
    epoch_jump: bool = False  # its assignment allowed it to jump replica epochs
    nbd_clients: list = field(default_factory=list)  # type: ignore[type-arg]  # its status's
    rekey: dict | None = None  # type: ignore[type-arg]  # its status's data-key sweep (tagged)


@dataclass
class SimNode:
    name: str
    zone: str = ""
    alive: bool = True
    replicas: dict[str, int] = field(default_factory=dict)  # id -> generation
    engines: dict[str, SimEngine] = field(default_factory=dict)
    ops_done: dict[str, OperationReport] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)  # id -> the epoch it accepted
    last: Assignments | None = None
    fail_ops: bool = False


class Sim:
    def __init__(
        self, monkeypatch, nodes: int = 3, zones: list[str] | None = None, **settings
    ) -> None:  # type: ignore[no-untyped-def]
        self.clock = Clock()
        # every module that reads the clock (each took ``now`` from the repository)
        modules = (repository, heartbeat, engine_reports, operation_results, reconcilers)
        more = (service_base, service_nodes, service_volumes, service_backups, backup_results)
        more += (group_snapshots, service_groups)
        for mod in (*modules, *more):
            monkeypatch.setattr(mod, "now", self.clock)
        self.settings = ManagerSettings(**settings)
        self.repo = Repository(open_store("memory:"))
        self.service = Service(self.repo, self.settings, "memory", "test")
        self.recs = [cls(self.repo, self.settings) for cls in reconcilers.RECONCILERS]
        self.nodes: dict[str, SimNode] = {}
        # what a finished operation reports as its result (backups: the BackupInfo)
        self.op_result: Callable[[OperationAssignment], dict[str, Any]] | None = None
        for i in range(nodes):
            z = zones[i % len(zones)] if zones else ""
            self.nodes[f"node-{i + 1}"] = SimNode(f"node-{i + 1}", z)

    async def start(self) -> None:
        for n in self.nodes.values():
            await self.register(n)

    async def register(self, n: SimNode) -> None:
        await self.service.register(
            n.name,
            Registration(
                zone=n.zone,
                address=f"10.0.0.{len(n.name)}",
                replica_port=9500,
                disks=[DiskReport(name="disk-0", path=f"/d/{n.name}", capacity_bytes=100 << 30)],
            ),
        )

    def _engine_status(self, n: SimNode, vol: str, e: SimEngine) -> dict:  # type: ignore[type-arg]
        links = []
        for rid in e.replicas:
            holder = next((m for m in self.nodes.values() if rid in m.replicas), None)
            ok = holder is not None and holder.alive and rid not in e.down
            links.append(
                {
                    "id": rid,
                    "mode": "RW" if ok else "ERR",
                    "generation": e.generation if ok else 0,
                    "error": "" if ok else e.errors.get(rid, ""),
                }
            )
            if ok and holder is not None:
                holder.replicas[rid] = e.generation
        return {
            "volume": vol,
            "epoch": e.epoch,
            "generation": e.generation,
            "endpoint": f"nbd://{n.name}:10809/{vol}",
            "replicas": links,
            "scrub": {"last": e.scrub_last},
            "nbd_clients": e.nbd_clients,
            **({"rekey": e.rekey} if e.rekey is not None else {}),
        }

    async def beat(self, n: SimNode) -> Assignments:
        hb = Heartbeat(
            replica_port=9500,
            replicas=[
                ReplicaReport(
                    id=rid,
                    volume=rid.rsplit("-r", 1)[0],
                    generation=g,
                    epoch=n.epochs.get(rid, 0),
                )
                for rid, g in n.replicas.items()
            ],
            engines=[
                EngineReport(
                    volume=v,
                    epoch=e.epoch,
                    running=self._opens(e),
                    status=self._engine_status(n, v, e) if self._opens(e) else {},
                )
                for v, e in n.engines.items()
            ],
            operations=list(n.ops_done.values()),
        )
        a = await self.service.heartbeat(n.name, hb)
        n.last = a
        # converge like an agent
        for ra in a.replicas:
            if ra.delete:
                n.replicas.pop(ra.id, None)
            else:
                n.replicas.setdefault(ra.id, 0)
        wanted = {ea.volume: ea for ea in a.engines}
        for v in list(n.engines):
            if v not in wanted:
                del n.engines[v]
        for v, ea in wanted.items():
            ids = [s.split("@", 1)[0] for s in ea.replicas]
            cur = n.engines.get(v)
            if cur is None or cur.epoch != ea.epoch:
                gens = [
                    g
                    for m in self.nodes.values()
                    if m.alive
                    for r, g in m.replicas.items()
                    if r in ids
                ]
                top = max(gens, default=0)
                assert top >= ea.require_generation, "engine would start from stale replicas"
                n.engines[v] = SimEngine(
                    ea.epoch, ids, top, last_scrub_at=ea.last_scrub_at, epoch_jump=ea.epoch_jump
                )
            else:
                cur.replicas = ids
                cur.down = {r for r in cur.down if r in ids}
        for oa in a.operations:
            if oa.id not in n.ops_done:
                n.ops_done[oa.id] = OperationReport(
                    id=oa.id,
                    state=OperationState.FAILED if n.fail_ops else OperationState.SUCCEEDED,
                    error="boom" if n.fail_ops else "",
                    result=self.op_result(oa) if self.op_result and not n.fail_ops else {},
                )
        live = {oa.id for oa in a.operations}
        n.ops_done = {k: v for k, v in n.ops_done.items() if k in live}
        return a

    def _opens(self, e: SimEngine) -> bool:
        """Like a real engine's OPENs: each replica accepts the engine's epoch unless it
        holds a newer one (fenced: the engine does not run) or the engine's is more than
        MAX_EPOCH_STEP above it without ``epoch_jump``."""
        from cargohold.constants import MAX_EPOCH_STEP

        ok = True
        for m in self.nodes.values():
            for rid in e.replicas:
                if rid not in m.replicas:
                    continue
                have = m.epochs.get(rid, 0)
                if have > e.epoch or (e.epoch - have > MAX_EPOCH_STEP and not e.epoch_jump):
                    ok = False
                else:
                    m.epochs[rid] = e.epoch
        return ok

    async def step(self, seconds: float = 1.0, rounds: int = 1) -> None:
        for _ in range(rounds):
            self.clock.t += seconds
            for n in self.nodes.values():
                if n.alive:
                    await self.beat(n)
            for r in self.recs:
                await r.run_once()

    def write(self, vol: str, count: int = 10) -> None:
        """The workload writes through whichever engine serves ``vol``."""
        for n in self.nodes.values():
            e = n.engines.get(vol)
            if n.alive and e is not None:
                e.generation += count
