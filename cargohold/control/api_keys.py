"""The manager API's routes about the keys of encrypted volumes (docs/keys.md): the data
key an agent fetches to start an engine, and the rewrap under another key-encryption key.
(``DELETE /api/v1/volumes/{volume}?shred=true`` is in api_volumes.py.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import plaintext_caller, requires, requires_engine_agent
from cargohold.control.requests import DataKeyRequest, KeyChoice
from cargohold.control.service import Service
from cargohold.control.views import VolumeView
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission

Write = Annotated[Identity, Depends(requires(Permission.VOLUMES_WRITE))]
EngineAgent = Annotated[Identity, Depends(requires_engine_agent())]


class DataKeyView(BaseModel):
    """The answer of POST /api/v1/volumes/{volume}/data-key (to the engine's agent only)."""

    volume: str
    epoch: int
    encryption_id: str = Field(description="the volume's encryption id (32 hex digits)")
    data_key: str = Field(description="the 32-byte data key, base64: for the engine only")


def add_routes(app: FastAPI, s: Service) -> None:
    @app.post(
        "/api/v1/volumes/{volume}/data-key",
        tags=["volumes"],
        response_model=DataKeyView,
        responses=errors(403, 404, 409, 422, body=True),
    )
    async def data_key(
        volume: Name, body: DataKeyRequest, who: EngineAgent, request: Request
    ) -> JSON:
        """The volume's clear data key, for the agent of the node its engine is assigned
        to (and nobody else: 403, admins included), to hand to the engine it starts. Over
        the API's mutual TLS; logged as an event, never the key."""
        return await s.data_key(volume, body, who, plaintext_caller(request, who))

    @app.post(
        "/api/v1/volumes/{volume}/rekey",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(400, 404, 409, 422, body=True),
    )
    async def rekey(volume: Name, body: KeyChoice, who: Write) -> JSON:
        """Rewrap the volume's data key under another key-encryption key (the old one must
        still unwrap it). No data is rewritten: the data key stays."""
        return await s.rekey(volume, body, who)
