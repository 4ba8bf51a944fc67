"""What the recurring-job runner (job_runner.py) asks of the manager: the volumes, and
snapshots and backups made, listed, deleted and followed. ``JobActions`` is the interface
(the runner's unit tests give it a fake); ``ServiceActions`` does it through the manager's
``Service`` with the manager's own authority (``who=None``: a job was checked against its
tenant when it was created, and selects only that tenant's volumes).

Backups are the backup part's calls (``Service.create_backup``, ``delete_backup``,
``backups``); a manager built without them answers a backup job's run with
``Unsupported("backups are not available ...")``, recorded as the run's failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cargohold.control import requests
from cargohold.control.requests import SnapshotCreate
from cargohold.control.service import Service
from cargohold.errors import Unsupported

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


def _need(service: object, name: str) -> Any:
    fn = getattr(service, name, None)
    if fn is None:
        raise Unsupported(
            f"backups are not available in this manager (no Service.{name}): a backup job "
            "cannot run"
        )
    return fn


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
        create = _need(self.s, "create_backup")
        make = getattr(requests, "BackupCreate", None)  # the backup part's request body
        if make is None:
            raise Unsupported("backups are not available in this manager (no BackupCreate)")
        op: JSON = await create(volume, make(target=target, snapshot=None, labels=labels), None)
        return op

    async def delete_backup(self, backup: str) -> None:
        await _need(self.s, "delete_backup")(backup, None)

    async def backups(self, volume: str, target: str) -> list[JSON]:
        found: list[JSON] = await _need(self.s, "backups")(None, volume=volume, target=target)
        return found

    async def operation(self, oid: str) -> JSON:
        return await self.s.operation(oid)
