"""``Service``'s calls on group snapshots (create, list, get, delete): the records that
control/group_snapshots.py then carries out step by step. A caller sees a group only if it
sees every volume of it (control/tenancy.py).
"""

from __future__ import annotations

from typing import Any

from cargohold.control import group_snapshots as groups
from cargohold.control.model import GroupSnapshot, GroupSnapshotState
from cargohold.control.repository import now
from cargohold.control.requests import GroupSnapshotCreate
from cargohold.control.service_base import ServiceBase
from cargohold.control.tenancy import visible
from cargohold.errors import AlreadyExists, Busy, NotFound, WrongState
from cargohold.security.identity import Identity


class GroupCalls(ServiceBase):
    """``who``: the caller (None: the manager itself)."""

    async def _sees(self, g: GroupSnapshot, who: Identity | None) -> bool:
        if who is None or who.tenant is None:
            return True
        for name in g.volumes:
            try:
                if not visible(who, await self.repo.volume(name)):
                    return False
            except NotFound:
                continue  # gone since: the group's other volumes decide
        return True

    async def group_snapshots(self, who: Identity | None = None) -> list[dict[str, Any]]:
        return [g.model_dump() for g in await groups.listing(self.repo) if await self._sees(g, who)]

    async def group_snapshot(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        g = await groups.get(self.repo, name)
        if not await self._sees(g, who):
            raise NotFound(f"group snapshot {name} not found")
        return g.model_dump()

    async def create_group_snapshot(
        self, req: GroupSnapshotCreate, who: Identity | None = None
    ) -> dict[str, Any]:
        """A new group, held in the sorted order of its volumes. The same request again
        answers the group as it is (idempotent); the same name with other volumes is
        AlreadyExists; a volume in another group in flight, or with a snapshot of that
        name already, is refused."""
        order = sorted(req.volumes)
        try:
            old = await groups.get(self.repo, req.name)
        except NotFound:
            old = None
        if old is not None and old.state is GroupSnapshotState.FAILED and old.volumes == order:
            await groups.drop(self.repo, req.name)  # nothing of it is left: take it afresh
            old = None
        if old is not None:
            if sorted(old.volumes) != order or not await self._sees(old, who):
                raise AlreadyExists(
                    f"group snapshot {req.name} already exists, of volumes {', '.join(old.volumes)}"
                )
            return old.model_dump()
        for name in order:
            self._usable(await self._volume(name, who))
            try:
                await self.repo.snapshot(name, req.name)
            except NotFound:
                continue
            raise AlreadyExists(f"volume {name} already has a snapshot named {req.name}")
        busy = groups.holding_volumes(await groups.listing(self.repo)) & set(order)
        if busy:
            raise Busy(
                f"volumes {', '.join(sorted(busy))} are in another group snapshot being taken; "
                "try again when it is done"
            )
        g = GroupSnapshot(
            name=req.name,
            volumes=order,
            hold_seconds=float(req.hold_seconds),
            created_at=now(),
        )
        await groups.create(self.repo, g)
        self.kick.set()
        return g.model_dump()

    async def delete_group_snapshot(self, name: str, who: Identity | None = None) -> dict[str, Any]:
        """Deletes its member snapshots, then the group (in the background: the record shows
        ``deleting`` until then)."""
        g = await groups.get(self.repo, name)
        if not await self._sees(g, who):
            raise NotFound(f"group snapshot {name} not found")
        if g.state in groups.IN_FLIGHT:
            raise WrongState(f"group snapshot {name} is still being taken ({g.state.value})")
        g = await groups.update(self.repo, name, state=GroupSnapshotState.DELETING)
        self.kick.set()
        return g.model_dump()
