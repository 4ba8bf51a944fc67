"""``Service``'s calls on snapshots (create, delete, revert: each an operation an engine
runs) and on operations.
"""

from __future__ import annotations

from typing import Any

from cargohold.control.model import OperationKind, Snapshot, SnapshotState
from cargohold.control.requests import SnapshotCreate
from cargohold.control.service_base import ServiceBase
from cargohold.errors import AlreadyExists, NotFound, WrongState


class SnapshotCalls(ServiceBase):
    async def snapshots(self, name: str) -> list[dict[str, Any]]:
        await self.repo.volume(name)
        return [s.model_dump() for s in await self.repo.snapshots(name)]

    async def create_snapshot(self, name: str, req: SnapshotCreate) -> dict[str, Any]:
        self._usable(await self.repo.volume(name))
        try:
            old = await self.repo.snapshot(name, req.name)
        except NotFound:
            old = None
        if old is not None:
            raise AlreadyExists(f"snapshot {req.name} of volume {name} already exists")
        op = await self._snapshot_op(name, req.name, req.labels)
        self.kick.set()
        return op.model_dump()

    async def delete_snapshot(self, name: str, snap: str) -> dict[str, Any]:
        self._usable(await self.repo.volume(name))

        def change(s: Snapshot) -> Snapshot:
            if s.state is SnapshotState.PENDING:
                raise WrongState(f"snapshot {snap} is still being created")
            s.state = SnapshotState.DELETING
            return s

        await self.repo.update_snapshot(name, snap, change)
        op = await self._operation(OperationKind.SNAPSHOT_DELETE, name, {"name": snap})
        return op.model_dump()

    async def revert(self, name: str, snap: str) -> dict[str, Any]:
        vol = await self.repo.volume(name)
        self._usable(vol)
        if vol.attach_node is not None:
            raise WrongState(
                f"volume {name} is attached to node {vol.attach_node}: detach it before a "
                "revert (its filesystem must not be mounted while its blocks change)"
            )
        s = await self.repo.snapshot(name, snap)
        if s.state is not SnapshotState.READY:
            raise WrongState(f"snapshot {snap} is {s.state.value}")
        op = await self._operation(OperationKind.SNAPSHOT_REVERT, name, {"name": snap})
        return op.model_dump()

    # --- the rest ------------------------------------------------------------------------
    async def operations(self, volume: str | None) -> list[dict[str, Any]]:
        return [o.model_dump() for o in await self.repo.operations(volume)]

    async def operation(self, oid: str) -> dict[str, Any]:
        return (await self.repo.operation(oid)).model_dump()
