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


class DataKeyGeneration(BaseModel):
    generation: int
    data_key: str = Field(description="32 bytes, base64: for the engine only")


class DataKeyView(BaseModel):
    """The answer of POST /api/v1/volumes/{volume}/data-key (to the engine's agent only)."""

    volume: str
    epoch: int
    encryption_id: str = Field(description="the volume's encryption id (32 hex digits)")
    data_key: str = Field(description="the newest 32-byte data key, base64: for the engine only")
    generation: int = Field(default=1, description="the newest data key's generation")
    keys: list[DataKeyGeneration] = Field(
        default_factory=list,
        description="every data-key generation the engine needs, newest first (the first is "
        "data_key): it seals with the first, opens with any",
    )


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
        """Rewrap the volume's data keys under another key-encryption key (``key`` or
        ``kms_key``; the old one must still unwrap them: no data is rewritten), and/or with
        ``data_key: true`` rotate the data key: a new generation, wrapped by the volume's
        KEK, put first; the engine rewrites every block under it in the background, online
        (at the next attach when detached). 409 while a rotation runs, with 8 keys kept, or
        on a plain volume."""
        return await s.rekey(volume, body, who)
