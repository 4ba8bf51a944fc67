"""The manager API's routes about bearer tokens (permission ``security``): make one (the
token is in this answer only), list them (never their secrets), delete one.
``cargohold token create|list|delete`` calls them (cli/token_cmd.py)."""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr

from cargohold.control.access import ApiToken
from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON
from cargohold.control.auth import need
from cargohold.control.service import Service
from cargohold.control.token_store import TokenStore
from cargohold.security.policy import Permission

MAX_TTL = 10 * 365 * 86400.0
TokenId = Path(pattern=r"^[0-9a-f]{12}$")
_IDENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"  # security/identity.py's names


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "operator", "reader", "csi"]
    name: StrictStr = Field(pattern=_IDENT, max_length=253)
    tenant: StrictStr | None = Field(default=None, pattern=_IDENT, max_length=253)
    ttl_seconds: StrictFloat | None = Field(
        default=None, gt=0, le=MAX_TTL, description="lifetime; none: until deleted"
    )


class TokenView(BaseModel):
    """A token's record without its digest."""

    id: str
    role: str
    name: str
    tenant: str | None = None
    created: float
    expires: float | None = None


class TokenCreated(TokenView):
    token: str = Field(description="the bearer token; shown here once, never again")


def view(rec: ApiToken) -> JSON:
    return rec.model_dump(exclude={"digest"})


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/tokens...``."""
    tokens = TokenStore(s.repo.store)
    security = [need(Permission.SECURITY)]

    @app.post(
        "/api/v1/tokens",
        dependencies=security,
        status_code=201,
        tags=["security"],
        response_model=TokenCreated,
        responses=errors(400, 422, body=True),
    )
    async def create_token(body: TokenCreate) -> JSON:
        rec, token = await tokens.create(body.role, body.name, body.tenant, body.ttl_seconds)
        return {**view(rec), "token": token}

    @app.get(
        "/api/v1/tokens",
        dependencies=security,
        tags=["security"],
        response_model=list[TokenView],
        responses=errors(),
    )
    async def list_tokens() -> list[JSON]:
        return [view(t) for t in await tokens.list()]

    @app.delete(
        "/api/v1/tokens/{token_id}",
        dependencies=security,
        tags=["security"],
        response_model=TokenView,
        responses=errors(404, 422),
    )
    async def delete_token(token_id: str = TokenId) -> JSON:
        return view(await tokens.delete(token_id))
