"""The manager API's routes about orphans: replicas on disks that no record names (list,
delete, adopt).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI

from cargohold.control.adoption import AdoptionPlan, AdoptRequest
from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON
from cargohold.control.auth import need, requires
from cargohold.control.model import Orphan
from cargohold.control.service import Service
from cargohold.errors import PermissionDenied
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/orphans...``."""

    @app.get(
        "/api/v1/orphans",
        tags=["replicas"],
        response_model=list[Orphan],
        responses=errors(422),
    )
    async def orphans(
        who: Annotated[Identity, Depends(requires(Permission.NODES_READ))],
        node: str | None = None,
    ) -> list[JSON]:
        if who.tenant is not None:  # a tenant's CSI driver reads nodes, not other data
            raise PermissionDenied(f"{who} may not list orphans: they are the cluster's")
        return await s.orphans(node)

    @app.delete(
        "/api/v1/orphans/{node}/{replica}",
        dependencies=[need(Permission.RECOVERY)],
        tags=["replicas"],
        response_model=Orphan,
        responses=errors(404, 422),
    )
    async def delete_orphan(node: str, replica: str) -> JSON:
        return await s.delete_orphan(node, replica)

    @app.post(
        "/api/v1/orphans/adopt",
        dependencies=[need(Permission.RECOVERY)],
        tags=["replicas"],
        response_model=AdoptionPlan,
        responses=errors(404, 409, body=True),
    )
    async def adopt(body: AdoptRequest) -> JSON:
        return await s.adopt(body)
