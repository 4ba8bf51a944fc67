"""``Service``'s calls on nodes and disks: registration, cordon, drain, disks."""

from __future__ import annotations

import logging
from typing import Any

from cargohold.control.disk_roots import check_disk_path
from cargohold.control.model import (
    Disk,
    DiskReport,
    EventKind,
    Node,
    Registration,
    Replica,
    check_name,
)
from cargohold.control.repository import now
from cargohold.control.requests import DiskCreate
from cargohold.control.service_base import ServiceBase
from cargohold.control.version_skew import check_agent
from cargohold.errors import NotFound, VersionSkew

log = logging.getLogger("cargohold.manager")


class NodeCalls(ServiceBase):
    async def register(self, name: str, reg: Registration) -> dict[str, Any]:
        check_name(name, "node name")
        await self.check_agent_version(name, reg.agent_version)
        t = now()

        def make(old: Node | None) -> Node:
            base = old or Node(name=name, address=reg.address, registered_at=t)
            return base.model_copy(
                update={
                    "zone": reg.zone,
                    "address": reg.address,
                    "replica_port": reg.replica_port or base.replica_port,
                    "tags": reg.tags,
                    "agent_pid": reg.agent_pid,
                    "heartbeat_at": t,
                    "down_since": None,
                }
            )

        node = await self.repo.upsert_node(name, make)
        for d in reg.disks:
            await self._report_disk(name, d)
        log.info("node %s registered (%s, zone %r)", name, reg.address, reg.zone)
        self.kick.set()
        return self._node_view(node)

    async def _report_disk(self, node: str, d: DiskReport) -> None:
        existing = {x.name: x for x in await self.repo.disks(node)}
        old = existing.get(d.name)
        disk = Disk(
            node=node,
            name=d.name,
            path=d.path,
            capacity_bytes=d.capacity_bytes,
            tags=sorted(set(d.tags) | set(old.tags if old else [])),
            schedulable=old.schedulable if old else True,
            # what the agent found there stays until its next heartbeat says otherwise
            checked=old.checked if old else False,
            error=old.error if old else "",
            warning=old.warning if old else "",
        )
        if old != disk:
            await self.repo.put_disk(disk)

    async def check_agent_version(self, name: str, version: str) -> None:
        """Refuse (VersionSkew, HTTP 409) an agent whose version is too far from this
        manager's (control/version_skew.py). A refused node is kept up, not declared down:
        its engines still serve, and failing it over would only start rebuilds; its record
        says why (``error``) until an upgrade ends the skew."""
        try:
            check_agent(name, version)
        except VersionSkew as e:
            why = str(e)
            first = self.agent_versions.get(name) != version
            self.agent_versions[name] = version

            def refused(n: Node) -> Node:
                n.heartbeat_at = now()
                n.down_since = None
                n.error = why
                return n

            try:
                await self.repo.update_node(name, refused)
            except NotFound:
                pass  # not registered yet: nothing to keep up
            if first:  # said once per version, not every heartbeat
                log.error("%s", why)
                await self.repo.add_event(EventKind.AGENT_REFUSED, why, node=name)
            raise
        self.agent_versions[name] = version

    def _node_view(self, n: Node) -> dict[str, Any]:
        return {**n.view(), "agent_version": self.agent_versions.get(n.name, "")}

    async def node(self, name: str) -> dict[str, Any]:
        return self._node_view(await self.repo.node(name))

    async def nodes(self) -> list[dict[str, Any]]:
        return [self._node_view(n) for n in await self.repo.nodes()]

    async def cordon(self, name: str, on: bool) -> dict[str, Any]:
        def change(n: Node) -> Node:
            n.cordoned = on
            if not on:
                n.draining = False
            return n

        node = await self.repo.update_node(name, change)
        if not on:  # uncordon also ends a drain: replicas not yet moved stay
            for rep in await self.repo.replicas():
                if rep.node == name and rep.evicting and not rep.deleting:

                    def stay(r: Replica) -> Replica:
                        r.evicting = False
                        return r

                    await self.repo.update_replica(rep.volume, rep.id, stay)
        self.kick.set()
        return node.view()

    async def drain(self, name: str) -> dict[str, Any]:
        """Cordon, and move every replica off the node (new ones first, then the old go)."""

        def change(n: Node) -> Node:
            n.cordoned = n.draining = True
            return n

        node = await self.repo.update_node(name, change)
        for rep in await self.repo.replicas():
            if rep.node == name and not rep.deleting and not rep.evicting:

                def evict(r: Replica) -> Replica:
                    r.evicting = True
                    return r

                await self.repo.update_replica(rep.volume, rep.id, evict)
        self.kick.set()
        return node.view()

    async def disks(self) -> list[dict[str, Any]]:
        return [d.model_dump() for d in await self.repo.disks()]

    async def add_disk(self, node: str, req: DiskCreate) -> dict[str, Any]:
        check_disk_path(req.path, self.settings.disk_roots)  # never /etc, /proc, ...
        await self.repo.node(node)
        disk = Disk(
            node=node,
            name=req.name,
            path=req.path,
            capacity_bytes=req.capacity_bytes,
            tags=req.tags,
        )
        await self.repo.create_disk(disk)
        self.kick.set()
        return disk.model_dump()
