"""The manager's REST API (FastAPI): JSON in, ``Service`` calls, JSON out.

Errors from the one exception tree become HTTP statuses here, and only here:
NotFound 404, AlreadyExists and WrongState 409, InvalidArgument 400, validation 422,
Unschedulable 507, ManagerUnavailable 503. The body is always
``{"error": {"type": ..., "message": ...}}`` (422 keeps FastAPI's ``detail`` list too).
The schema is served at ``/openapi.json`` and checked in as docs/api/openapi.json.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cargohold import __version__
from cargohold.control.model import (
    Assignments,
    Disk,
    Heartbeat,
    Operation,
    Registration,
    Snapshot,
)
from cargohold.control.service import (
    AttachRequest,
    DiskCreate,
    ExpandRequest,
    Service,
    SnapshotCreate,
    VolumeCreate,
)
from cargohold.control.views import (
    AttachmentView,
    ErrorBody,
    Health,
    NodeView,
    ReplicaView,
    StatusView,
    VolumeView,
)
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
    Unschedulable,
    WrongState,
)

STATUS: list[tuple[type[CargoholdError], int]] = [
    (NotFound, 404),
    (AlreadyExists, 409),
    (WrongState, 409),
    (Busy, 409),
    (Unschedulable, 507),
    (InvalidArgument, 400),
    (ManagerUnavailable, 503),
]

JSON = dict[str, Any]


WHY = {
    400: "InvalidArgument: the request fits the schema but not the rules",
    404: "NotFound: no such node, volume, snapshot or operation",
    409: "AlreadyExists, WrongState (the object's state does not allow it now) or "
    "Conflict (too many concurrent changes of one record: try again)",
    422: "InvalidArgument: the body or a parameter does not fit the schema (with `detail`)",
    503: "ManagerUnavailable: the manager cannot reach its state store",
    507: "Unschedulable: the replicas do not fit; the message says why, node by node",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route declares (every route may answer 503)."""
    return {c: {"model": ErrorBody, "description": WHY[c]} for c in sorted({*codes, 503})}


def http_status(e: CargoholdError) -> int:
    for cls, code in STATUS:
        if isinstance(e, cls):
            return code
    return 500


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build(service: Service) -> FastAPI:
    app = FastAPI(
        title="cargohold manager",
        version=__version__,
        description="Nodes, disks, volumes, replicas, attachments, snapshots and operations of "
        "a cargohold cluster. See docs/control-plane.md.",
    )
    s = service

    @app.exception_handler(CargoholdError)
    async def _error(_: Request, e: CargoholdError) -> JSONResponse:
        return JSONResponse(
            {"error": {"type": type(e).__name__, "message": str(e)}}, status_code=http_status(e)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(
            {
                "error": {"type": "InvalidArgument", "message": "; ".join(parts)},
                "detail": [{k: v for k, v in err.items() if k != "ctx"} for err in e.errors()],
            },
            status_code=422,
        )

    @app.get("/healthz", tags=["manager"], response_model=Health)
    async def healthz() -> JSON:
        return {"ok": True, "leader": s.is_leader, "manager": s.manager_id, "backend": s.backend}

    @app.get("/api/v1/status", tags=["manager"], response_model=StatusView, responses=errors())
    async def status() -> JSON:
        return await s.status()

    # nodes and disks
    @app.get("/api/v1/nodes", tags=["nodes"], response_model=list[NodeView], responses=errors())
    async def nodes() -> list[JSON]:
        return await s.nodes()

    @app.get(
        "/api/v1/nodes/{node}", tags=["nodes"], response_model=NodeView, responses=errors(404, 422)
    )
    async def node(node: str) -> JSON:
        return await s.node(node)

    @app.put(
        "/api/v1/nodes/{node}", tags=["agents"], response_model=NodeView, responses=errors(409, 422)
    )
    async def register(node: str, body: Registration) -> JSON:
        return await s.register(node, body)

    @app.post("/api/v1/nodes/{node}/heartbeat", tags=["agents"], responses=errors(404, 409, 422))
    async def heartbeat(node: str, body: Heartbeat, request: Request) -> Assignments:
        if body.hold <= 0:
            return await s.heartbeat(node, body)
        gone = asyncio.ensure_future(_disconnected(request))  # a held answer nobody awaits
        try:
            return await s.heartbeat(node, body, gone)
        finally:
            gone.cancel()

    @app.post(
        "/api/v1/nodes/{node}/cordon",
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def cordon(node: str) -> JSON:
        return await s.cordon(node, True)

    @app.post(
        "/api/v1/nodes/{node}/uncordon",
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def uncordon(node: str) -> JSON:
        return await s.cordon(node, False)

    @app.post(
        "/api/v1/nodes/{node}/drain",
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def drain(node: str) -> JSON:
        return await s.drain(node)

    @app.get("/api/v1/disks", tags=["disks"], response_model=list[Disk], responses=errors())
    async def disks() -> list[JSON]:
        return await s.disks()

    @app.post(
        "/api/v1/nodes/{node}/disks",
        status_code=201,
        tags=["disks"],
        response_model=Disk,
        responses=errors(404, 409, 422),
    )
    async def add_disk(node: str, body: DiskCreate) -> JSON:
        return await s.add_disk(node, body)

    # volumes
    @app.get(
        "/api/v1/volumes", tags=["volumes"], response_model=list[VolumeView], responses=errors()
    )
    async def volumes() -> list[JSON]:
        return await s.volumes()

    @app.post(
        "/api/v1/volumes",
        status_code=201,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(400, 404, 409, 422, 507),
    )
    async def create_volume(body: VolumeCreate) -> JSON:
        return await s.create_volume(body)

    @app.get(
        "/api/v1/volumes/{volume}",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 422),
    )
    async def volume(volume: str) -> JSON:
        return await s.volume(volume)

    @app.delete(
        "/api/v1/volumes/{volume}",
        status_code=202,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def delete_volume(volume: str, purge: bool = False) -> JSON:
        return await s.delete_volume(volume, purge)

    @app.post(
        "/api/v1/volumes/{volume}/attach",
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def attach(volume: str, body: AttachRequest) -> JSON:
        return await s.attach(volume, body)

    @app.post(
        "/api/v1/volumes/{volume}/detach",
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def detach(volume: str) -> JSON:
        return await s.detach(volume)

    @app.post(
        "/api/v1/volumes/{volume}/expand",
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(400, 404, 409, 422),
    )
    async def expand(volume: str, body: ExpandRequest) -> JSON:
        return await s.expand(volume, body)

    @app.post(
        "/api/v1/volumes/{volume}/scrub",
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def scrub(volume: str) -> JSON:
        return await s.scrub(volume)

    @app.post(
        "/api/v1/volumes/{volume}/recover-epoch",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def recover_epoch(volume: str) -> JSON:
        """Raise the volume's epoch above every epoch its replicas report (a volume fenced
        by a bogus epoch; docs/operations.md)."""
        return await s.recover_epoch(volume)

    @app.get(
        "/api/v1/volumes/{volume}/replicas",
        tags=["replicas"],
        response_model=list[ReplicaView],
        responses=errors(404, 422),
    )
    async def volume_replicas(volume: str) -> list[JSON]:
        return await s.replicas(volume)

    @app.get(
        "/api/v1/replicas", tags=["replicas"], response_model=list[ReplicaView], responses=errors()
    )
    async def replicas() -> list[JSON]:
        return await s.replicas(None)

    # snapshots
    @app.get(
        "/api/v1/volumes/{volume}/snapshots",
        tags=["snapshots"],
        response_model=list[Snapshot],
        responses=errors(404, 422),
    )
    async def snapshots(volume: str) -> list[JSON]:
        return await s.snapshots(volume)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def create_snapshot(volume: str, body: SnapshotCreate) -> JSON:
        return await s.create_snapshot(volume, body)

    @app.delete(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def delete_snapshot(volume: str, snapshot: str) -> JSON:
        return await s.delete_snapshot(volume, snapshot)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}/revert",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def revert(volume: str, snapshot: str) -> JSON:
        return await s.revert(volume, snapshot)

    # operations and attachments
    @app.get(
        "/api/v1/operations",
        tags=["operations"],
        response_model=list[Operation],
        responses=errors(422),
    )
    async def operations(volume: str | None = None) -> list[JSON]:
        return await s.operations(volume)

    @app.get(
        "/api/v1/operations/{op}",
        tags=["operations"],
        response_model=Operation,
        responses=errors(404, 422),
    )
    async def operation(op: str) -> JSON:
        return await s.operation(op)

    @app.get(
        "/api/v1/attachments",
        tags=["attachments"],
        response_model=list[AttachmentView],
        responses=errors(),
    )
    async def attachments() -> list[JSON]:
        return await s.attachments()

    return app
