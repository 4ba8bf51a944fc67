"""The manager API's routes about orphans: replicas on disks that no record names (list,
delete, adopt).
"""

from __future__ import annotations

from fastapi import FastAPI

from cargohold.control.adoption import AdoptionPlan, AdoptRequest
from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON
from cargohold.control.auth import need
from cargohold.control.model import Orphan
from cargohold.control.service import Service
from cargohold.security.policy import Permission


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/orphans...``."""

    @app.get(
        "/api/v1/orphans",
        dependencies=[need(Permission.NODES_READ)],
        tags=["replicas"],
        response_model=list[Orphan],
        responses=errors(422),
    )
    async def orphans(node: str | None = None) -> list[JSON]:
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
