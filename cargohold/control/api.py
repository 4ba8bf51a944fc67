"""The manager's REST API (FastAPI): JSON in, ``Service`` calls, JSON out.

Errors from the one exception tree become HTTP statuses here, and only here:
NotFound 404, AlreadyExists and WrongState 409, InvalidArgument 400, validation 422,
Unschedulable 507, ManagerUnavailable (and StateStoreDamaged) 503; and the request's own
faults: an unknown route 404, a wrong method 405 (with ``Allow``), a body above
``max_request_bytes`` 413, a body that is not ``application/json`` 415. The body is always
``{"error": {"type": ..., "message": ...}}`` (422 keeps a ``detail`` list too, whose
``input`` is the offending value when it is plain JSON, else a short repr).
JSON bodies are parsed strictly: NaN and Infinity are refused, and so are numbers too large
for a float. The schema is served at ``/openapi.json`` and checked in as
docs/api/openapi.json.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cargohold import __version__
from cargohold.control.adoption import AdoptionPlan, AdoptRequest
from cargohold.control.model import (
    NAME_PATTERN,
    Assignments,
    Disk,
    Event,
    Heartbeat,
    Operation,
    Orphan,
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
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    StateStoreDamaged,
    Unschedulable,
    UnsupportedMediaType,
    WrongState,
)

log = logging.getLogger("cargohold.manager")

STATUS: list[tuple[type[CargoholdError], int]] = [
    (NotFound, 404),
    (AlreadyExists, 409),
    (WrongState, 409),
    (Busy, 409),
    (Unschedulable, 507),
    (UnsupportedMediaType, 415),
    (PayloadTooLarge, 413),
    (MethodNotAllowed, 405),
    (InvalidArgument, 400),
    (ManagerUnavailable, 503),
]

# what a Starlette-raised HTTP error (routing, the body bound) is, in our tree's names
HTTP_ERRORS: dict[int, type[CargoholdError]] = {
    400: InvalidArgument,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}
INPUT_REPR_MAX = 200  # characters of an unserialisable input a 422 echoes

Name = Annotated[str, Path(pattern=NAME_PATTERN, min_length=1, max_length=63)]

JSON = dict[str, Any]


WHY = {
    400: "InvalidArgument: the request fits the schema but not the rules",
    404: "NotFound: no such node, volume, snapshot or operation",
    409: "AlreadyExists, WrongState (the object's state does not allow it now) or "
    "Conflict (too many concurrent changes of one record: try again)",
    413: "PayloadTooLarge: the body is larger than the manager's bound (max_request_bytes)",
    415: "UnsupportedMediaType: a body must be sent as Content-Type: application/json",
    422: "InvalidArgument: the body or a parameter does not fit the schema, or the body is "
    "not valid JSON (with `detail`)",
    503: "ManagerUnavailable: the manager cannot use its state store (unreachable, or "
    "damaged: StateStoreDamaged names the file or record)",
    507: "Unschedulable: the replicas do not fit; the message says why, node by node",
}


def errors(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers a route declares: every route may answer 503; a route that takes
    a body also 413, 415 and 422."""
    more = {413, 415, 422} if body else set()
    return {c: {"model": ErrorBody, "description": WHY[c]} for c in sorted({*codes, *more, 503})}


def _is_json(content_type: str) -> bool:
    m = email.message.Message()
    m["content-type"] = content_type
    sub = m.get_content_subtype()
    return m.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:40]} is out of range")
    return v


def parse_json(body: bytes) -> Any:
    """Strict JSON: no NaN or Infinity (which Python's json takes and which could never be
    written back), no number that overflows a float."""
    return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, read only up to ``limit`` bytes (a Content-Length above it is refused
    before anything is read); PayloadTooLarge past it."""
    too_big = PayloadTooLarge(f"the body is larger than {limit} bytes (max_request_bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    request._body = body = b"".join(chunks)  # Request.body() returns it from now on
    return body


class JSONRoute(APIRoute):
    """A route whose body (when it takes one) must be ``application/json`` (else 415) and
    strict JSON (else 422); the parsed body is handed on to FastAPI, which uses it as is."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            body = await _bounded_body(request, request.app.state.max_request_bytes)
            if body:
                kind = request.headers.get("content-type", "")
                if not _is_json(kind):
                    raise UnsupportedMediaType(
                        f"the body must be JSON (Content-Type: application/json), not {kind[:80]!r}"
                        if kind
                        else "the body has no Content-Type: send it as application/json"
                    )
                try:
                    request._json = parse_json(body)  # Request.json() returns it from now on
                except (ValueError, RecursionError) as e:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_invalid",
                                "loc": ("body",),
                                "msg": f"the body is not valid JSON: {str(e)[:200]}",
                                "input": {},
                            }
                        ]
                    ) from None
            return await handler(request)

        return checked


def safe_input(value: Any) -> Any:
    """What a 422 echoes of the input: the value itself when it is plain, finite JSON of a
    modest size, else a truncated repr (bytes, NaN, a huge body never break the answer)."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and len(text) <= INPUT_REPR_MAX:
        return value
    r = repr(value)
    return r if len(r) <= INPUT_REPR_MAX else r[: INPUT_REPR_MAX - 3] + "..."


def _allowed(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first one's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def error_response(e: CargoholdError, status: int, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse(
        {"error": {"type": type(e).__name__, "message": str(e)}},
        status_code=status,
        headers=headers,
    )


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
    app.router.route_class = JSONRoute
    app.state.max_request_bytes = service.settings.max_request_bytes
    s = service

    @app.exception_handler(CargoholdError)
    async def _error(_: Request, e: CargoholdError) -> Any:
        if isinstance(e, StateStoreDamaged):
            s.repo.note_damage(e)  # /healthz fails until it is repaired
        return error_response(e, http_status(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> Any:
        cls = HTTP_ERRORS.get(e.status_code, InvalidArgument)
        headers = dict(e.headers or {})
        if e.status_code == 404:
            msg = f"no such route: {request.method} {request.url.path[:200]}"
        elif e.status_code == 405:
            allowed = _allowed(app, dict(request.scope))
            headers["Allow"] = ", ".join(allowed)
            msg = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        else:
            msg = str(e.detail)
        return error_response(cls(msg), e.status_code, headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> Any:
        log.error("%s %s failed: %r", request.method, request.url.path[:200], e)
        return JSONResponse(
            {"error": {"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:500]}},
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts, detail = [], []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            msg = str(err.get("msg"))
            parts.append(f"{where}: {msg}" if where else msg)
            detail.append(
                {
                    "type": str(err.get("type", "")),
                    "loc": [x if isinstance(x, int) else str(x) for x in err.get("loc", ())],
                    "msg": msg,
                    "input": safe_input(err.get("input")),
                }
            )
        return JSONResponse(
            {
                "error": {"type": "InvalidArgument", "message": "; ".join(parts)[:2000]},
                "detail": detail[:50],
            },
            status_code=422,
        )

    @app.get(
        "/healthz",
        tags=["manager"],
        response_model=Health,
        responses={503: {"model": ErrorBody, "description": WHY[503]}},
    )
    async def healthz() -> JSON:
        """Readiness: the state store answers (a read within 2 s) and no damage requests
        or reconcilers ran into is left; else 503 saying what is wrong."""
        return await s.health()

    @app.get("/livez", tags=["manager"], response_model=Health)
    async def livez() -> JSON:
        """Liveness: the process serves requests. It does not read the state store: a
        damaged or unreachable store is not mended by restarting the manager."""
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
    async def node(node: Name) -> JSON:
        return await s.node(node)

    @app.put(
        "/api/v1/nodes/{node}",
        tags=["agents"],
        response_model=NodeView,
        responses=errors(409, 422, body=True),
    )
    async def register(node: Name, body: Registration) -> JSON:
        return await s.register(node, body)

    @app.post(
        "/api/v1/nodes/{node}/heartbeat",
        tags=["agents"],
        responses=errors(404, 409, 422, body=True),
    )
    async def heartbeat(node: Name, body: Heartbeat, request: Request) -> Assignments:
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
    async def cordon(node: Name) -> JSON:
        return await s.cordon(node, True)

    @app.post(
        "/api/v1/nodes/{node}/uncordon",
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def uncordon(node: Name) -> JSON:
        return await s.cordon(node, False)

    @app.post(
        "/api/v1/nodes/{node}/drain",
        tags=["nodes"],
        response_model=NodeView,
        responses=errors(404, 409, 422),
    )
    async def drain(node: Name) -> JSON:
        return await s.drain(node)

    @app.get("/api/v1/disks", tags=["disks"], response_model=list[Disk], responses=errors())
    async def disks() -> list[JSON]:
        return await s.disks()

    @app.post(
        "/api/v1/nodes/{node}/disks",
        status_code=201,
        tags=["disks"],
        response_model=Disk,
        responses=errors(404, 409, 422, body=True),
    )
    async def add_disk(node: Name, body: DiskCreate) -> JSON:
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
        responses=errors(400, 404, 409, 422, 507, body=True),
    )
    async def create_volume(body: VolumeCreate) -> JSON:
        return await s.create_volume(body)

    @app.get(
        "/api/v1/volumes/{volume}",
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 422),
    )
    async def volume(volume: Name) -> JSON:
        return await s.volume(volume)

    @app.delete(
        "/api/v1/volumes/{volume}",
        status_code=202,
        tags=["volumes"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def delete_volume(volume: Name, purge: bool = False) -> JSON:
        return await s.delete_volume(volume, purge)

    @app.post(
        "/api/v1/volumes/{volume}/attach",
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422, body=True),
    )
    async def attach(volume: Name, body: AttachRequest) -> JSON:
        return await s.attach(volume, body)

    @app.post(
        "/api/v1/volumes/{volume}/detach",
        status_code=202,
        tags=["attachments"],
        response_model=VolumeView,
        responses=errors(404, 409, 422),
    )
    async def detach(volume: Name) -> JSON:
        return await s.detach(volume)

    @app.post(
        "/api/v1/volumes/{volume}/expand",
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(400, 404, 409, 422, body=True),
    )
    async def expand(volume: Name, body: ExpandRequest) -> JSON:
        return await s.expand(volume, body)

    @app.post(
        "/api/v1/volumes/{volume}/scrub",
        status_code=202,
        tags=["volumes"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def scrub(volume: Name) -> JSON:
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
    async def volume_replicas(volume: Name) -> list[JSON]:
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
    async def snapshots(volume: Name) -> list[JSON]:
        return await s.snapshots(volume)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422, body=True),
    )
    async def create_snapshot(volume: Name, body: SnapshotCreate) -> JSON:
        return await s.create_snapshot(volume, body)

    @app.delete(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def delete_snapshot(volume: Name, snapshot: Name) -> JSON:
        return await s.delete_snapshot(volume, snapshot)

    @app.post(
        "/api/v1/volumes/{volume}/snapshots/{snapshot}/revert",
        status_code=202,
        tags=["snapshots"],
        response_model=Operation,
        responses=errors(404, 409, 422),
    )
    async def revert(volume: Name, snapshot: Name) -> JSON:
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

    # orphans (replicas on disks that no record names) and events
    @app.get(
        "/api/v1/orphans", tags=["replicas"], response_model=list[Orphan], responses=errors(422)
    )
    async def orphans(node: str | None = None) -> list[JSON]:
        return await s.orphans(node)

    @app.delete(
        "/api/v1/orphans/{node}/{replica}",
        tags=["replicas"],
        response_model=Orphan,
        responses=errors(404, 422),
    )
    async def delete_orphan(node: str, replica: str) -> JSON:
        return await s.delete_orphan(node, replica)

    @app.post(
        "/api/v1/orphans/adopt",
        tags=["replicas"],
        response_model=AdoptionPlan,
        responses=errors(404, 409, body=True),
    )
    async def adopt(body: AdoptRequest) -> JSON:
        return await s.adopt(body)

    @app.get("/api/v1/events", tags=["manager"], response_model=list[Event], responses=errors())
    async def events() -> list[JSON]:
        return await s.events()

    return app
