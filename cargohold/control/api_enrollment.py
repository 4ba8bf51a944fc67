"""The manager API's routes for joining the cluster and the certificates of nodes and
engines, node removal, and disk drain/removal (``control/enrollment.py`` does the work).

``POST /api/v1/join`` is the one route a caller without a certificate may use: the join
token in its body is its credential. Every other route here needs a permission
(``control/auth.py``); the certificate routes only ``agent/<node>`` of that node.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import join_token, require_agent, requires
from cargohold.control.enrollment import (
    EngineCertificateRequest,
    EngineCredentialsView,
    JoinRequest,
    JoinTokenCreate,
    JoinTokenView,
    NewJoinToken,
    NodeCredentialsView,
    NodeRemoved,
    RenewRequest,
)
from cargohold.control.model import Disk
from cargohold.control.service import Service
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/join-tokens``, ``/api/v1/join``, node certificates, node and disk removal."""

    @app.post(
        "/api/v1/join-tokens",
        status_code=201,
        tags=["security"],
        response_model=NewJoinToken,
        responses=errors(401, 403, 409, body=True),
    )
    async def create_join_token(
        body: JoinTokenCreate, ident: Identity = Depends(requires(Permission.SECURITY))
    ) -> JSON:
        return await s.create_join_token(body, str(ident))

    @app.get(
        "/api/v1/join-tokens",
        tags=["security"],
        response_model=list[JoinTokenView],
        responses=errors(401, 403),
        dependencies=[Depends(requires(Permission.SECURITY))],
    )
    async def join_tokens() -> list[JSON]:
        return await s.join_tokens()

    @app.delete(
        "/api/v1/join-tokens/{token_id}",
        tags=["security"],
        response_model=JoinTokenView,
        responses=errors(401, 403, 404, 422),
        dependencies=[Depends(requires(Permission.SECURITY))],
    )
    async def delete_join_token(token_id: Name) -> JSON:
        return await s.delete_join_token(token_id)

    @app.post(
        "/api/v1/join",
        dependencies=[Depends(join_token())],
        tags=["agents"],
        response_model=NodeCredentialsView,
        responses=errors(400, 401, 409, body=True),
    )
    async def join(body: JoinRequest) -> JSON:
        return await s.join(body)

    @app.post(
        "/api/v1/nodes/{node}/certificates",
        tags=["agents"],
        response_model=NodeCredentialsView,
        responses=errors(400, 401, 403, 404, 409, body=True),
    )
    async def renew(
        node: Name, body: RenewRequest, ident: Identity = Depends(requires(Permission.HEARTBEAT))
    ) -> JSON:
        require_agent(ident, node)
        return await s.renew(node, body)

    @app.post(
        "/api/v1/nodes/{node}/engine-certificates",
        tags=["agents"],
        response_model=EngineCredentialsView,
        responses=errors(400, 401, 403, 404, 409, body=True),
    )
    async def engine_certificate(
        node: Name,
        body: EngineCertificateRequest,
        ident: Identity = Depends(requires(Permission.HEARTBEAT)),
    ) -> JSON:
        require_agent(ident, node)
        return await s.engine_certificate(node, body)

    @app.delete(
        "/api/v1/nodes/{node}",
        tags=["nodes"],
        response_model=NodeRemoved,
        responses=errors(401, 403, 404, 409, 422),
        dependencies=[Depends(requires(Permission.SECURITY))],
    )
    async def remove_node(node: Name) -> JSON:
        return await s.remove_node(node)

    @app.post(
        "/api/v1/nodes/{node}/disks/{disk}/drain",
        tags=["disks"],
        response_model=Disk,
        responses=errors(401, 403, 404, 422),
        dependencies=[Depends(requires(Permission.NODES_WRITE))],
    )
    async def drain_disk(node: Name, disk: Name) -> JSON:
        return await s.drain_disk(node, disk)

    @app.delete(
        "/api/v1/nodes/{node}/disks/{disk}",
        tags=["disks"],
        response_model=Disk,
        responses=errors(401, 403, 404, 409, 422),
        dependencies=[Depends(requires(Permission.NODES_WRITE))],
    )
    async def remove_disk(node: Name, disk: Name) -> JSON:
        return await s.remove_disk(node, disk)
