"""The manager API's routes about nodes and disks, and the agents' registration and
heartbeat (held: the long poll, ``Service.heartbeat``).
"""

from __future__ import annotations

import asyncio

from fastapi import Depends, FastAPI, Request

from cargohold.control.api_errors import errors
from cargohold.control.api_json import JSON, Name
from cargohold.control.auth import AGENT, need, require_agent, requires
from cargohold.control.model import Assignments, Disk, Heartbeat, Registration
from cargohold.control.requests import DiskCreate
from cargohold.control.service import Service
from cargohold.control.views import NodeView
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def add_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/nodes...`` and ``/api/v1/disks``."""

    @app.get(
        "/api/v1/nodes",
        dependencies=[need(Permission.NODES_READ)],
        tags=["nodes"],
        response_model=list[NodeView],
        responses=errors(),
    )
    async def nodes() -> list[JSON]:
        return await s.nodes()

    @app.get(
        "/api/v1/nodes/{node}",
        dependencies=[need(Permission.NODES_READ)],
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 422),
    )
    async def node(node: Name) -> JSON:
        return await s.node(node)

    @app.put(
        "/api/v1/nodes/{node}",
        dependencies=[AGENT],
        tags=["agents"],
        response_model=NodeView,
        responses=errors(401, 403, 409, 422, body=True),
    )
    async def register(
        node: Name, body: Registration, ident: Identity = Depends(requires(Permission.HEARTBEAT))
    ) -> JSON:
        require_agent(ident, node)  # only agent/<node> registers node (and sets its address)
        return await s.register(node, body)

    @app.post(
        "/api/v1/nodes/{node}/heartbeat",
        dependencies=[AGENT],
        tags=["agents"],
        responses=errors(404, 409, 422, body=True),
    )
    async def heartbeat(node: Name, body: Heartbeat, request: Request) -> Assignments:
        await s.check_agent_version(node, body.agent_version)
        if body.hold <= 0:
            return await s.heartbeat(node, body)
        gone = asyncio.ensure_future(_disconnected(request))  # a held answer nobody awaits
        try:
            return await s.heartbeat(node, body, gone)
        finally:
            gone.cancel()

    @app.post(
        "/api/v1/nodes/{node}/cordon",
        dependencies=[need(Permission.NODES_WRITE)],
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def cordon(node: Name) -> JSON:
        return await s.cordon(node, True)

    @app.post(
        "/api/v1/nodes/{node}/uncordon",
        dependencies=[need(Permission.NODES_WRITE)],
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def uncordon(node: Name) -> JSON:
        return await s.cordon(node, False)

    @app.post(
        "/api/v1/nodes/{node}/drain",
        dependencies=[need(Permission.NODES_WRITE)],
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def drain(node: Name) -> JSON:
        return await s.drain(node)

    @app.get(
        "/api/v1/disks",
        dependencies=[need(Permission.NODES_READ)],
        tags=["disks"],
        response_model=list[Disk],
        responses=errors(),
    )
    async def disks() -> list[JSON]:
        return await s.disks()

    @app.post(
        "/api/v1/nodes/{node}/disks",
        dependencies=[need(Permission.NODES_WRITE)],
        status_code=201,
        tags=["disks"],
        response_model=Disk,
        responses=errors(400, 401, 403, 404, 409, 422, body=True),
    )
    async def add_disk(node: Name, body: DiskCreate) -> JSON:
        return await s.add_disk(node, body)
