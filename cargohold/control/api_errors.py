"""The manager API's errors: ours and the request's own, as HTTP statuses and one body.

Errors from the one exception tree become HTTP statuses here, and only here:
NotFound 404, AlreadyExists and WrongState 409, InvalidArgument 400, validation 422,
Unschedulable 507, ManagerUnavailable (and StateStoreDamaged) 503, Unauthenticated 401
(with ``WWW-Authenticate``), PermissionDenied 403; and the request's own
faults: an unknown route 404, a wrong method 405 (with ``Allow``), a body above
``max_request_bytes`` 413, a body that is not ``application/json`` 415. The body is always
``{"error": {"type": ..., "message": ...}}`` (422 keeps a ``detail`` list too, whose
``input`` is the offending value when it is plain JSON, else a short repr).
A client that goes away while its request is read (a long poll given up, ``events
--follow`` stopped with Ctrl-C, an agent killed) is no error: one debug line, an empty
499 that nobody receives, and no traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from cargohold.control.auth import CHALLENGE
from cargohold.control.service import Service
from cargohold.control.views import ErrorBody
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    InvalidArgument,
    ManagerUnavailable,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    StateStoreDamaged,
    Unauthenticated,
    Unschedulable,
    UnsupportedMediaType,
    WrongState,
)

log = logging.getLogger("cargohold.manager")

STATUS: list[tuple[type[CargoholdError], int]] = [
    (Unauthenticated, 401),
    (PermissionDenied, 403),
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
    (Unauthenticated, 401),
    (PermissionDenied, 403),
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


WHY = {
    400: "InvalidArgument: the request fits the schema but not the rules",
    401: "Unauthenticated: no client certificate or bearer token the cluster accepts (with "
    "WWW-Authenticate; a join token for /api/v1/join)",
    403: "PermissionDenied: the caller's role (or tenant) lacks the route's permission",
    404: "NotFound: no such node, volume, snapshot or operation (or another tenant's)",
    409: "AlreadyExists, WrongState (the object's state does not allow it now), Busy "
    "(in use: a detach while NBD clients are connected) or Conflict (too many concurrent "
    "changes of one record: try again)",
    413: "PayloadTooLarge: the body is larger than the manager's bound (max_request_bytes)",
    415: "UnsupportedMediaType: a body must be sent as Content-Type: application/json",
    422: "InvalidArgument: the body or a parameter does not fit the schema, or the body is "
    "not valid JSON (with `detail`)",
    503: "ManagerUnavailable: the manager cannot use its state store (unreachable, or "
    "damaged: StateStoreDamaged names the file or record)",
    507: "Unschedulable: the replicas do not fit; the message says why, node by node",
}


def errors(*codes: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers a route declares: every route may answer 401, 403 and 503; a
    route that takes a body also 413, 415 and 422."""
    more = {413, 415, 422} if body else set()
    every = {401, 403, 503}
    return {c: {"model": ErrorBody, "description": WHY[c]} for c in sorted({*codes, *more, *every})}


SECRET_FIELDS = frozenset({"access_key", "secret_key", "repository_key"})  # BackupTargetCreate
HIDDEN = "**********"


def redact(loc: Any, value: Any) -> Any:
    """A 422's input without secrets: a secret field's value (or a body holding one) is
    never echoed back (answers get logged by proxies and clients)."""
    if isinstance(loc, tuple | list) and loc and loc[-1] in SECRET_FIELDS:
        return HIDDEN
    if isinstance(value, dict) and SECRET_FIELDS & set(value):
        return {k: HIDDEN if k in SECRET_FIELDS else v for k, v in value.items()}
    return value


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


CLIENT_CLOSED = 499  # nginx's "client closed request": what the metrics count it as (4xx)


def install_handlers(app: FastAPI, s: Service) -> None:
    """Every error a route or the routing raises, as its status and the one body."""

    @app.exception_handler(CargoholdError)
    async def _error(_: Request, e: CargoholdError) -> Any:
        if isinstance(e, StateStoreDamaged):
            s.repo.note_damage(e)  # /healthz fails until it is repaired
        status = http_status(e)
        return error_response(e, status, dict(CHALLENGE) if status == 401 else None)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        log.debug("%s %s: the client went away", request.method, request.url.path[:200])
        return Response(status_code=CLIENT_CLOSED)

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
                    "input": safe_input(redact(err.get("loc", ()), err.get("input"))),
                }
            )
        return JSONResponse(
            {
                "error": {"type": "InvalidArgument", "message": "; ".join(parts)[:2000]},
                "detail": detail[:50],
            },
            status_code=422,
        )
