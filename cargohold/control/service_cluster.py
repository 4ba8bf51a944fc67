"""``Service``'s calls on the manager and the cluster as a whole: health, status,
orphaned replicas (list, delete, adopt) and events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cargohold.control import event_log
from cargohold.control.adoption import AdoptRequest, adopt
from cargohold.control.model import EventKind, NodeState
from cargohold.control.service_base import ServiceBase
from cargohold.control.tenancy import only_visible
from cargohold.control.version_skew import running_version
from cargohold.errors import ManagerUnavailable, NotFound
from cargohold.security.identity import Identity

log = logging.getLogger("cargohold.manager")


HEALTH_TIMEOUT = 2.0  # seconds /healthz waits for the state store before it answers 503


class ClusterCalls(ServiceBase):
    async def health(self) -> dict[str, Any]:
        """``/healthz``: the state store answers within ``HEALTH_TIMEOUT`` and the damage
        requests or reconcilers ran into is repaired; else ManagerUnavailable (or
        StateStoreDamaged) saying what is wrong, which the API answers with 503."""
        try:
            await asyncio.wait_for(self.repo.check(), HEALTH_TIMEOUT)
        except TimeoutError:
            raise ManagerUnavailable(
                f"the {self.backend} state store did not answer within {HEALTH_TIMEOUT:g} s"
            ) from None
        return {
            "ok": True,
            "leader": self.is_leader,
            "manager": self.manager_id,
            "backend": self.backend,
            "version": running_version(),
        }

    async def status(self, who: Identity | None = None) -> dict[str, Any]:
        """The cluster's status; a tenant's volume counts and allocation are of its own
        volumes (node counts and capacity are the cluster's)."""
        nodes = await self.repo.nodes()
        vols = only_visible(who, await self.repo.volumes())
        disks = await self.repo.disks()
        counts = {s.value: 0 for s in NodeState}
        for n in nodes:
            counts[n.state.value] += 1
        vcount = {"total": len(vols), "healthy": 0, "degraded": 0, "faulted": 0, "attached": 0}
        for v in vols:
            if v.robustness.value in vcount:
                vcount[v.robustness.value] += 1
            vcount["attached"] += v.attach_node is not None
        reps = await self.repo.replicas()
        if who is not None and who.tenant is not None:  # its own volumes' replicas only
            mine = {v.name for v in vols}
            reps = [r for r in reps if r.volume in mine]
        return {
            "backend": self.backend,
            "manager": self.manager_id,
            "leader": await self.repo.store.leader("manager"),
            "nodes": counts,
            "volumes": vcount,
            "capacity_bytes": sum(d.capacity_bytes for d in disks),
            "allocated_bytes": sum(r.size_bytes for r in reps if not r.deleting),
            "cluster_id": self.repo.cluster_id,
        }

    # --- orphans and events -----------------------------------------------------------------
    async def orphans(self, node: str | None = None) -> list[dict[str, Any]]:
        return [o.model_dump() for o in await self.repo.orphans(node)]

    async def delete_orphan(self, node: str, rid: str) -> dict[str, Any]:
        """An operator deletes an orphan: a tombstone, then its node deletes it (into its
        disk's trash). The agent refuses when the replica is another cluster's."""
        found = [o for o in await self.repo.orphans(node) if o.id == rid]
        if not found:
            raise NotFound(f"no orphan replica {rid} on node {node}")
        orphan = found[0]
        await self.repo.condemn_orphan(orphan, "orphan deleted")
        log.warning("orphan replica %s on node %s deleted by an operator", rid, node)
        await self.repo.add_event(
            EventKind.ORPHAN_DELETED,
            f"orphan replica {rid} on node {node} deleted by an operator",
            node=node,
            volume=orphan.volume,
            replica=rid,
        )
        return orphan.model_dump()

    async def adopt(self, req: AdoptRequest) -> dict[str, Any]:
        """Recreate a volume's records from its orphaned replicas (control/adoption.py)."""
        plan = await adopt(self.repo, req)
        self.kick.set()
        return plan.model_dump()

    async def events(
        self,
        who: Identity | None = None,
        volume: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The events of ``volume`` (None: all) after ``since``, the newest ``limit``, oldest
        first (control/event_log.py); a tenant's only those of its own volumes (node and
        orphan events are the provider's)."""
        events = await self.repo.events()
        if who is not None and who.tenant is not None:
            seen = {v.name for v in only_visible(who, await self.repo.volumes())}
            events = [e for e in events if e.volume and e.volume in seen]
        return [e.model_dump() for e in event_log.select(events, volume, since, limit)]
