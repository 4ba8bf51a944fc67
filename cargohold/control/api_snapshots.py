"""The manager API's routes about snapshots and the operations that carry out long work
(snapshots, expand, scrub, clone).
"""

from __future__ import annotations

from fastapi import FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import need
from cargohold.control.model import Operation, Snapshot
from cargohold.control.requests import SnapshotCreate
from cargohold.control.service import Service
from cargohold.security.policy import Permission


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/volumes/{volume}/snapshots...`` and ``/api/v1/operations...``."""

    @app.get(
        "/api/v1/volumes/{volume}/snapshots",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["snapshots"],
        response_model=list[Snapshot],
        responses=errors(404, 422),
    )
    async def snapshots(volume: Name) -> list[JSON]:
        return await s.snapshots(volume)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422, body=True),
    )
    async def create_snapshot(volume: Name, body: SnapshotCreate) -> JSON:
        return await s.create_snapshot(volume, body)

    @app.delete(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def delete_snapshot(volume: Name, snapshot: Name) -> JSON:
        return await s.delete_snapshot(volume, snapshot)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}/revert",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def revert(volume: Name, snapshot: Name) -> JSON:
        return await s.revert(volume, snapshot)

    # operations and attachments
    @app.get(
        "/api/v1/operations",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["operations"],
        response_model=list[Operation],
        responses=errors(422),
    )
    async def operations(volume: str | None = None) -> list[JSON]:
        return await s.operations(volume)

    @app.get(
        "/api/v1/operations/{op}",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["operations"],
        response_model=Operation,
        responses=errors(404, 422),
    )
    async def operation(op: str) -> JSON:
        return await s.operation(op)
