"""The manager API's routes about backup targets and backups (docs/backups.md). A restore
is ``POST /api/v1/volumes`` with ``source: {"backup": ID}`` (api_volumes.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import requires
from cargohold.control.backup_records import Backup, BackupTarget
from cargohold.control.model import BACKUP_ID_PATTERN, Operation
from cargohold.control.requests import BackupCreate, BackupTargetCreate
from cargohold.control.service import Service
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission

TargetsRead = Annotated[Identity, Depends(requires(Permission.TARGETS_READ))]
TargetsWrite = Annotated[Identity, Depends(requires(Permission.TARGETS_WRITE))]
BackupsRead = Annotated[Identity, Depends(requires(Permission.BACKUPS_READ))]
BackupsWrite = Annotated[Identity, Depends(requires(Permission.BACKUPS_WRITE))]
BackupId = Annotated[str, Path(pattern=BACKUP_ID_PATTERN, min_length=1, max_length=128)]


class SyncResult(BaseModel):
    target: str
    backups: int  # in the repository's catalog
    imported: list[str]  # records made now
    missing: list[str]  # records whose backup the catalog no longer lists (kept)


class ExportedKey(BaseModel):
    target: str
    repository_key: str  # base64 of the 32-byte key


class GcResult(BaseModel):
    target: str
    counts: dict[str, int]  # what the repository's GC did (packs and bytes freed, ...)


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/backup-targets...``, ``/api/v1/backups...`` and a volume's backups."""

    @app.get(
        "/api/v1/backup-targets",
        tags=["backups"],
        response_model=list[BackupTarget],
        responses=errors(),
    )
    async def backup_targets(who: TargetsRead) -> list[JSON]:
        return await s.backup_targets(who)

    @app.post(
        "/api/v1/backup-targets",
        status_code=201,
        tags=["backups"],
        response_model=BackupTarget,
        responses=errors(400, 409, body=True),
    )
    async def create_backup_target(body: BackupTargetCreate, who: TargetsWrite) -> JSON:
        return await s.create_backup_target(body, who)

    @app.get(
        "/api/v1/backup-targets/{target}",
        tags=["backups"],
        response_model=BackupTarget,
        responses=errors(404, 422),
    )
    async def backup_target(target: Name, who: TargetsRead) -> JSON:
        return await s.backup_target(target, who)

    @app.delete(
        "/api/v1/backup-targets/{target}",
        tags=["backups"],
        response_model=BackupTarget,
        responses=errors(404, 409, 422),
    )
    async def delete_backup_target(target: Name, who: TargetsWrite) -> JSON:
        return await s.delete_backup_target(target, who)

    @app.post(
        "/api/v1/backup-targets/{target}/sync",
        tags=["backups"],
        response_model=SyncResult,
        responses=errors(400, 404, 422),
    )
    async def sync_backup_target(target: Name, who: TargetsWrite) -> JSON:
        return await s.sync_backup_target(target, who)

    @app.post(
        "/api/v1/backup-targets/{target}/gc",
        tags=["backups"],
        response_model=GcResult,
        responses=errors(400, 404, 422),
    )
    async def gc_backup_target(target: Name, who: TargetsWrite) -> JSON:
        return await s.gc_backup_target(target, who)

    @app.post(
        "/api/v1/backup-targets/{target}/export-key",
        tags=["backups"],
        response_model=ExportedKey,
        responses=errors(404, 422),
        description="The repository key of the target (base64): the only answer that "
        "carries a secret. Keep it apart from the cluster: without it nobody can read the "
        "backups.",
    )
    async def export_backup_key(target: Name, who: TargetsWrite) -> JSON:
        return await s.export_backup_key(target, who)

    @app.get(
        "/api/v1/backups",
        tags=["backups"],
        response_model=list[Backup],
        responses=errors(422),
    )
    async def backups(
        who: BackupsRead, volume: str | None = None, target: str | None = None
    ) -> list[JSON]:
        return await s.backups(who, volume=volume, target=target)

    @app.get(
        "/api/v1/backups/{backup}",
        tags=["backups"],
        response_model=Backup,
        responses=errors(404, 422),
    )
    async def backup(backup: BackupId, who: BackupsRead) -> JSON:
        return await s.backup(backup, who)

    @app.delete(
        "/api/v1/backups/{backup}",
        tags=["backups"],
        response_model=Backup,
        responses=errors(400, 404, 409, 422),
    )
    async def delete_backup(backup: BackupId, who: BackupsWrite) -> JSON:
        return await s.delete_backup(backup, who)

    @app.post(
        "/api/v1/volumes/{volume}/backups",
        status_code=202,
        tags=["backups"],
        response_model=Operation,
        responses=errors(404, 409, 422, body=True),
    )
    async def create_backup(volume: Name, body: BackupCreate, who: BackupsWrite) -> JSON:
        return await s.create_backup(volume, body, who)
