"""The manager API's routes about volumes, their replicas and attachments."""

from __future__ import annotations

from fastapi import FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import need
from cargohold.control.model import Operation
from cargohold.control.requests import AttachRequest, ExpandRequest, VolumeCreate
from cargohold.control.service import Service
from cargohold.control.views import AttachmentView, ReplicaView, VolumeView
from cargohold.security.policy import Permission


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/volumes...`` and ``/api/v1/replicas``."""

    @app.get(
        "/api/v1/volumes",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["volumes"],
        response_model=list[VolumeView],
        responses=errors(),
    )
    async def volumes() -> list[JSON]:
        return await s.volumes()

    @app.post(
        "/api/v1/volumes",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=201,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(400, 404, 409, 422, 507, body=True),
    )
    async def create_volume(body: VolumeCreate) -> JSON:
        return await s.create_volume(body)

    @app.get(
        "/api/v1/volumes/{volume}",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 422),
    )
    async def volume(volume: Name) -> JSON:
        return await s.volume(volume)

    @app.delete(
        "/api/v1/volumes/{volume}",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=202,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def delete_volume(volume: Name, purge: bool = False) -> JSON:
        return await s.delete_volume(volume, purge)

    @app.post(
        "/api/v1/volumes/{volume}/attach",
        dependencies=[need(Permission.VOLUMES_ATTACH)],
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422, body=True),
    )
    async def attach(volume: Name, body: AttachRequest) -> JSON:
        return await s.attach(volume, body)

    @app.post(
        "/api/v1/volumes/{volume}/detach",
        dependencies=[need(Permission.VOLUMES_ATTACH)],
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def detach(volume: Name) -> JSON:
        return await s.detach(volume)

    @app.post(
        "/api/v1/volumes/{volume}/expand",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(400, 404, 409, 422, body=True),
    )
    async def expand(volume: Name, body: ExpandRequest) -> JSON:
        return await s.expand(volume, body)

    @app.post(
        "/api/v1/volumes/{volume}/scrub",
        dependencies=[need(Permission.VOLUMES_WRITE)],
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def scrub(volume: Name) -> JSON:
        return await s.scrub(volume)

    @app.post(
        "/api/v1/volumes/{volume}/recover-epoch",
        dependencies=[need(Permission.RECOVERY)],
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def recover_epoch(volume: str) -> JSON:
        """Raise the volume's epoch above every epoch its replicas report (a volume fenced
        by a bogus epoch; docs/operations.md)."""
        return await s.recover_epoch(volume)

    @app.get(
        "/api/v1/volumes/{volume}/replicas",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["replicas"],
        response_model=list[ReplicaView],
        responses=errors(404, 422),
    )
    async def volume_replicas(volume: Name) -> list[JSON]:
        return await s.replicas(volume)

    @app.get(
        "/api/v1/replicas",
        dependencies=[need(Permission.NODES_READ)],
        tags=["replicas"],
        response_model=list[ReplicaView],
        responses=errors(),
    )
    async def replicas() -> list[JSON]:
        return await s.replicas(None)


def add_attachment_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/attachments``."""

    @app.get(
        "/api/v1/attachments",
        dependencies=[need(Permission.VOLUMES_READ)],
        tags=["attachments"],
        response_model=list[AttachmentView],
        responses=errors(),
    )
    async def attachments() -> list[JSON]:
        return await s.attachments()
