"""What the recurring-job runner (job_runner.py) asks of the manager: the volumes, and
snapshots and backups made, listed, deleted and followed. ``JobActions`` is the interface
(the runner's unit tests give it a fake); ``ServiceActions`` does it through the manager's
``Service`` with the manager's own authority (``who=None``: a job was checked against its
tenant when it was created, and selects only that tenant's volumes).

Backups are ``Service.create_backup``, ``delete_backup`` and ``backups``
(control/service_backups.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cargohold.control.requests import BackupCreate, SnapshotCreate
from cargohold.control.service import Service

JSON = dict[str, Any]


@dataclass(frozen=True)
class VolumeFacts:
    """What the runner needs of a volume."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None
    node: str = ""  # where its engine runs, else its first replica's node ("" if unknown)
    usable: bool = True  # not being deleted, released or cloned into


class JobActions(Protocol):
    async def volumes(self) -> list[VolumeFacts]: ...

    async def create_snapshot(self, volume: str, name: str, labels: dict[str, str]) -> JSON:
        """-> the snapshot-create operation (``id``)."""

    async def delete_snapshot(self, volume: str, name: str) -> None: ...

    async def snapshots(self, volume: str) -> list[JSON]:
        """Each with ``name``, ``state``, ``created_at``, ``labels``."""

    async def create_backup(self, volume: str, target: str, labels: dict[str, str]) -> JSON:
        """-> the backup operation (``id``; its ``args.backup`` is the backup's id)."""

    async def delete_backup(self, backup: str) -> None: ...

    async def backups(self, volume: str, target: str) -> list[JSON]:
        """Each with ``id``, ``state``, ``created``, ``labels``."""

    async def operation(self, oid: str) -> JSON:
        """The operation (``state``, ``error``, ``result``); NotFound when it is gone."""


class ServiceActions:
    """``JobActions`` over the manager's ``Service``."""

    def __init__(self, service: Service) -> None:
        self.s = service

    async def volumes(self) -> list[VolumeFacts]:
        repo = self.s.repo
        first: dict[str, str] = {}
        for r in await repo.replicas():
            if not r.deleting:
                first.setdefault(r.volume, r.node)
        out = []
        for v in await repo.volumes():
            node = v.engine.node if v.engine is not None else v.attach_node or ""
            out.append(
                VolumeFacts(
                    name=v.name,
                    labels=dict(v.labels),
                    tenant=v.tenant,
                    node=node or first.get(v.name, ""),
                    usable=not (v.deleting or v.released or not v.initialized),
                )
            )
        return out

    async def create_snapshot(self, volume: str, name: str, labels: dict[str, str]) -> JSON:
        return await self.s.create_snapshot(volume, SnapshotCreate(name=name, labels=labels))

    async def delete_snapshot(self, volume: str, name: str) -> None:
        await self.s.delete_snapshot(volume, name)

    async def snapshots(self, volume: str) -> list[JSON]:
        return await self.s.snapshots(volume)

    async def create_backup(self, volume: str, target: str, labels: dict[str, str]) -> JSON:
        req = BackupCreate(target=target, snapshot=None, labels=labels)
        op: JSON = await self.s.create_backup(volume, req, None)
        return op

    async def delete_backup(self, backup: str) -> None:
        await self.s.delete_backup(backup, None)

    async def backups(self, volume: str, target: str) -> list[JSON]:
        found: list[JSON] = await self.s.backups(None, volume=volume, target=target)
        return found

    async def operation(self, oid: str) -> JSON:
        return await self.s.operation(oid)
