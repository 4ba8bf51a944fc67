"""The manager API's routes about standby volumes (docs/disaster-recovery.md): create one
that follows another cluster's backups, and activate it. A standby is a volume: it is read,
listed and deleted through ``/api/v1/volumes`` (its ``standby`` field holds state and lag)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import requires
from cargohold.control.requests import StandbyCreate
from cargohold.control.service import Service
from cargohold.control.views import VolumeView
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission

Write = Annotated[Identity, Depends(requires(Permission.VOLUMES_WRITE))]


def add_routes(app: FastAPI, s: Service) -> None:
    """``POST /api/v1/standby-volumes`` and ``POST /api/v1/volumes/{volume}/activate``."""

    @app.post(
        "/api/v1/standby-volumes",
        status_code=201,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(400, 404, 409, 422, 507, body=True),
    )
    async def create_standby(body: StandbyCreate, who: Write) -> JSON:
        """A standby volume: restores the newest backup of ``source_volume`` in ``target``
        (a target this cluster shares with the source's), then applies each newer one."""
        return await s.create_standby(body, who)

    @app.post(
        "/api/v1/volumes/{volume}/activate",
        status_code=202,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def activate(volume: Name, who: Write) -> JSON:
        """Stop following; settle what runs (a torn apply is reverted to the last complete
        backup); the volume becomes a normal one (``standby.state`` ``active``)."""
        return await s.activate(volume, who)
