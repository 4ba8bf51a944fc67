"""The manager API's routes about volumes, their replicas and attachments."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import requires
from cargohold.control.model import Operation
from cargohold.control.requests import AttachRequest, ExpandRequest, VolumeCreate, VolumeUpdate
from cargohold.control.service import Service
from cargohold.control.views import AttachmentView, ReplicaView, VolumeView
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission

# the caller, if its role holds the permission (control/auth.py); tenancy.py scopes by it
Read = Annotated[Identity, Depends(requires(Permission.VOLUMES_READ))]
Write = Annotated[Identity, Depends(requires(Permission.VOLUMES_WRITE))]
Attach = Annotated[Identity, Depends(requires(Permission.VOLUMES_ATTACH))]
Recovery = Annotated[Identity, Depends(requires(Permission.RECOVERY))]
Nodes = Annotated[Identity, Depends(requires(Permission.NODES_READ))]


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/volumes...`` and ``/api/v1/replicas``."""

    @app.get(
        "/api/v1/volumes",
        tags=["volumes"],
        response_model=list[VolumeView],
        responses=errors(),
    )
    async def volumes(who: Read) -> list[JSON]:
        return await s.volumes(who)

    @app.post(
        "/api/v1/volumes",
        status_code=201,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(400, 404, 409, 422, 507, body=True),
    )
    async def create_volume(body: VolumeCreate, who: Write) -> JSON:
        return await s.create_volume(body, who)

    @app.get(
        "/api/v1/volumes/{volume}",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 422),
    )
    async def volume(volume: Name, who: Read) -> JSON:
        return await s.volume(volume, who)

    @app.patch(
        "/api/v1/volumes/{volume}",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(400, 404, 409, 422, body=True),
    )
    async def update_volume(volume: Name, body: VolumeUpdate, who: Write) -> JSON:
        """Change a volume in use, attached or not: its QoS limits (a merge patch; a limit
        set to null is removed). A running engine applies them within a second."""
        return await s.update_volume(volume, body, who)

    @app.delete(
        "/api/v1/volumes/{volume}",
        status_code=202,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def delete_volume(
        who: Write, volume: Name, purge: bool = False, shred: bool = False
    ) -> JSON:
        """Delete the volume (``purge``: also one released with reclaim policy Retain).
        ``shred``: destroy an encrypted volume's data key first, then delete it; its
        replicas, snapshots and backups can never be read again (docs/keys.md)."""
        return await s.delete_volume(volume, purge, who, shred)

    @app.post(
        "/api/v1/volumes/{volume}/attach",
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422, body=True),
    )
    async def attach(volume: Name, body: AttachRequest, who: Attach) -> JSON:
        return await s.attach(volume, body, who)

    @app.post(
        "/api/v1/volumes/{volume}/detach",
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def detach(volume: Name, who: Attach, force: bool = False) -> JSON:
        """Detach the volume: its engine stops. 409 Busy while NBD clients are connected
        (``nbd_clients``), unless ``force=true``."""
        return await s.detach(volume, who, force)

    @app.post(
        "/api/v1/volumes/{volume}/expand",
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(400, 404, 409, 422, 507, body=True),
    )
    async def expand(volume: Name, body: ExpandRequest, who: Write) -> JSON:
        return await s.expand(volume, body, who)

    @app.post(
        "/api/v1/volumes/{volume}/scrub",
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def scrub(volume: Name, who: Write) -> JSON:
        return await s.scrub(volume, who)

    @app.post(
        "/api/v1/volumes/{volume}/recover-epoch",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def recover_epoch(volume: str, who: Recovery) -> JSON:
        """Raise the volume's epoch above every epoch its replicas report (a volume fenced
        by a bogus epoch; docs/operations.md)."""
        return await s.recover_epoch(volume, who)

    @app.get(
        "/api/v1/volumes/{volume}/replicas",
        tags=["replicas"],
        response_model=list[ReplicaView],
        responses=errors(404, 422),
    )
    async def volume_replicas(volume: Name, who: Read) -> list[JSON]:
        return await s.replicas(volume, who)

    @app.get(
        "/api/v1/replicas",
        tags=["replicas"],
        response_model=list[ReplicaView],
        responses=errors(),
    )
    async def replicas(who: Nodes) -> list[JSON]:
        return await s.replicas(None, who)


def add_attachment_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/attachments``."""

    @app.get(
        "/api/v1/attachments",
        tags=["attachments"],
        response_model=list[AttachmentView],
        responses=errors(),
    )
    async def attachments(who: Read) -> list[JSON]:
        return await s.attachments(who)
