"""The manager API's routes about group snapshots: snapshots of several volumes at one
crash-consistent point (control/group_snapshots.py, docs/snapshots.md).
"""

from __future__ import annotations

from fastapi import FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.api_volumes import Read, Write
from cargohold.control.model import GroupSnapshot
from cargohold.control.requests import GroupSnapshotCreate
from cargohold.control.service import Service


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/group-snapshots...``: same permissions as a volume's snapshots."""

    @app.get(
        "/api/v1/group-snapshots",
        tags=["snapshots"],
        response_model=list[GroupSnapshot],
        responses=errors(422),
    )
    async def group_snapshots(who: Read) -> list[JSON]:
        return await s.group_snapshots(who)

    @app.post(
        "/api/v1/group-snapshots",
        status_code=202,
        tags=["snapshots"],
        response_model=GroupSnapshot,
        responses=errors(404, 409, 422, body=True),
    )
    async def create_group_snapshot(body: GroupSnapshotCreate, who: Write) -> JSON:
        return await s.create_group_snapshot(body, who)

    @app.get(
        "/api/v1/group-snapshots/{group}",
        tags=["snapshots"],
        response_model=GroupSnapshot,
        responses=errors(404, 422),
    )
    async def group_snapshot(group: Name, who: Read) -> JSON:
        return await s.group_snapshot(group, who)

    @app.delete(
        "/api/v1/group-snapshots/{group}",
        status_code=202,
        tags=["snapshots"],
        response_model=GroupSnapshot,
        responses=errors(404, 409, 422),
    )
    async def delete_group_snapshot(group: Name, who: Write) -> JSON:
        return await s.delete_group_snapshot(group, who)
