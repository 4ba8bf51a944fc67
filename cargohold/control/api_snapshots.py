"""The manager API's routes about snapshots and the operations that carry out long work
(snapshots, expand, scrub, clone).
"""

from __future__ import annotations

from fastapi import FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.api_volumes import Read, Write
from cargohold.control.model import Operation, Snapshot
from cargohold.control.requests import SnapshotCreate, SnapshotMetadataRequest
from cargohold.control.service import Service


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/volumes/{volume}/snapshots...`` and ``/api/v1/operations...``."""

    @app.get(
        "/api/v1/volumes/{volume}/snapshots",
        tags=["snapshots"],
        response_model=list[Snapshot],
        responses=errors(404, 422),
    )
    async def snapshots(volume: Name, who: Read) -> list[JSON]:
        return await s.snapshots(volume, who)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422, body=True),
    )
    async def create_snapshot(volume: Name, body: SnapshotCreate, who: Write) -> JSON:
        return await s.create_snapshot(volume, body, who)

    @app.delete(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def delete_snapshot(volume: Name, snapshot: Name, who: Write) -> JSON:
        return await s.delete_snapshot(volume, snapshot, who)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}/revert",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def revert(volume: Name, snapshot: Name, who: Write) -> JSON:
        return await s.revert(volume, snapshot, who)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}/metadata",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422, body=True),
    )
    async def snapshot_metadata(
        volume: Name, snapshot: Name, body: SnapshotMetadataRequest, who: Read
    ) -> JSON:
        """A page of changed-block metadata, as the operation's result (it changes nothing:
        a reader may ask)."""
        return await s.snapshot_metadata(volume, snapshot, body, who)

    # operations and attachments
    @app.get(
        "/api/v1/operations",
        tags=["operations"],
        response_model=list[Operation],
        responses=errors(422),
    )
    async def operations(who: Read, volume: str | None = None) -> list[JSON]:
        return await s.operations(volume, who)

    @app.get(
        "/api/v1/operations/{op}",
        tags=["operations"],
        response_model=Operation,
        responses=errors(404, 422),
    )
    async def operation(op: str, who: Read) -> JSON:
        return await s.operation(op, who)
