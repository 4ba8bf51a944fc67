"""``Service``'s calls on snapshots (create, delete, revert: each an operation an engine
runs) and on operations.
"""

from __future__ import annotations

from typing import Any

from cargohold.control.model import OperationKind, Snapshot, SnapshotState
from cargohold.control.requests import SnapshotCreate, SnapshotMetadataRequest
from cargohold.control.service_base import ServiceBase
from cargohold.control.tenancy import only_visible, visible
from cargohold.errors import AlreadyExists, NotFound, WrongState
from cargohold.security.identity import Identity


class SnapshotCalls(ServiceBase):
    """``who``: the caller; a snapshot, an operation follows its volume's tenant."""

    async def snapshots(self, name: str, who: Identity | None = None) -> list[dict[str, Any]]:
        await self._volume(name, who)
        return [s.model_dump() for s in await self.repo.snapshots(name)]

    async def create_snapshot(
        self, name: str, req: SnapshotCreate, who: Identity | None = None
    ) -> dict[str, Any]:
        self._usable(await self._volume(name, who))
        try:
            old = await self.repo.snapshot(name, req.name)
        except NotFound:
            old = None
        if old is not None:
            raise AlreadyExists(f"snapshot {req.name} of volume {name} already exists")
        op = await self._snapshot_op(name, req.name, req.labels)
        self.kick.set()
        return op.model_dump()

    async def delete_snapshot(
        self, name: str, snap: str, who: Identity | None = None
    ) -> dict[str, Any]:
        self._usable(await self._volume(name, who))

        def change(s: Snapshot) -> Snapshot:
            if s.state is SnapshotState.PENDING:
                raise WrongState(f"snapshot {snap} is still being created")
            s.state = SnapshotState.DELETING
            return s

        await self.repo.update_snapshot(name, snap, change)
        op = await self._operation(OperationKind.SNAPSHOT_DELETE, name, {"name": snap})
        return op.model_dump()

    async def revert(self, name: str, snap: str, who: Identity | None = None) -> dict[str, Any]:
        vol = await self._volume(name, who)
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

    async def snapshot_metadata(
        self, name: str, snap: str, req: SnapshotMetadataRequest, who: Identity | None = None
    ) -> dict[str, Any]:
        """An operation whose result is a page of ``snap``'s allocated blocks (or of those
        changed since ``req.base``), read by the volume's engine from the replicas' block
        maps (CSI SnapshotMetadata)."""
        self._usable(await self._volume(name, who))
        for s_name in (snap, req.base):
            if s_name is None:
                continue
            s = await self.repo.snapshot(name, s_name)
            if s.state is not SnapshotState.READY:
                raise WrongState(f"snapshot {s_name} of volume {name} is {s.state.value}")
        args = {"snapshot": snap, "base": req.base, "offset": req.offset}
        args["max_results"] = req.max_results
        op = await self._operation(OperationKind.SNAPSHOT_METADATA, name, args)
        return op.model_dump()

    # --- the rest ------------------------------------------------------------------------
    async def _seen_volumes(self, who: Identity | None) -> set[str] | None:
        """The names of the volumes ``who`` sees (None: all, even gone ones)."""
        if who is None or who.tenant is None:
            return None
        return {v.name for v in only_visible(who, await self.repo.volumes())}

    async def operations(
        self, volume: str | None, who: Identity | None = None
    ) -> list[dict[str, Any]]:
        seen = await self._seen_volumes(who)
        ops = await self.repo.operations(volume)
        return [o.model_dump() for o in ops if seen is None or o.volume in seen]

    async def operation(self, oid: str, who: Identity | None = None) -> dict[str, Any]:
        op = await self.repo.operation(oid)
        if who is not None and who.tenant is not None:
            try:
                ok = visible(who, await self.repo.volume(op.volume))
            except NotFound:
                ok = False  # its volume is gone: only the admin sees it still
            if not ok:
                raise NotFound(f"operation {oid} not found")
        return op.model_dump()
