"""The manager API's routes about tenants: ``/api/v1/tenants...`` (permission ``tenants``:
the admin's). What a tenant's own identities see is decided in control/tenancy.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import requires
from cargohold.control.requests import TenantCreate, TenantQuota
from cargohold.control.service import Service
from cargohold.control.views import TenantView
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission

Admin = Annotated[Identity, Depends(requires(Permission.TENANTS))]


def add_routes(app: FastAPI, s: Service) -> None:
    @app.get(
        "/api/v1/tenants", tags=["tenants"], response_model=list[TenantView], responses=errors()
    )
    async def tenants(_: Admin) -> list[JSON]:
        return await s.tenants()

    @app.post(
        "/api/v1/tenants",
        status_code=201,
        tags=["tenants"],
        response_model=TenantView,
        responses=errors(409, body=True),
    )
    async def create_tenant(body: TenantCreate, _: Admin) -> JSON:
        return await s.create_tenant(body)

    @app.get(
        "/api/v1/tenants/{tenant}",
        tags=["tenants"],
        response_model=TenantView,
        responses=errors(404, 422),
    )
    async def tenant(tenant: Name, _: Admin) -> JSON:
        return await s.tenant(tenant)

    @app.put(
        "/api/v1/tenants/{tenant}/quota",
        tags=["tenants"],
        response_model=TenantView,
        responses=errors(404, 409, 422, body=True),
    )
    async def set_quota(tenant: Name, body: TenantQuota, _: Admin) -> JSON:
        """A new quota (null: none). Below what the tenant uses now it is taken, and refuses
        new volumes and expansions until the tenant is under it again."""
        return await s.set_quota(tenant, body)

    @app.delete(
        "/api/v1/tenants/{tenant}",
        tags=["tenants"],
        response_model=TenantView,
        responses=errors(404, 409, 422),
    )
    async def delete_tenant(tenant: Name, _: Admin) -> JSON:
        """Refused (409) while the tenant has volumes."""
        return await s.delete_tenant(tenant)
