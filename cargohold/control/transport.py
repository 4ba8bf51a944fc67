"""The one HTTP layer to the manager's REST API: URLs, httpx clients, error answers.

Used by every client of the manager: the ``cargohold`` commands, the launcher and the CSI
driver (through ``control/client.py``, synchronous) and the node agents
(``agent/manager_link.py``, asyncio). TLS and authentication are to be added here, once
(issue #16), and every client has them.

Manager URLs (``parse_url``):

    http://HOST:PORT, https://HOST:PORT    as given (a trailing / dropped)
    HOST:PORT                              http://HOST:PORT
    unix:/PATH, unix:///PATH               the unix socket /PATH (a relative PATH is taken
                                           from the working directory)

Error answers (``error_from_response``) become the one exception tree, by the HTTP status
and the ``type`` of the answer's ``{"error": {"type", "message"}}`` body; this is the
error table of docs/control-plane.md, read backwards (a test keeps the two equal):

    404                  NotFound
    409                  AlreadyExists | WrongState | Busy (type Busy or Conflict);
                         another type: WrongState
    400, 422             InvalidArgument           (a 422's message names the fields)
    503                  ManagerUnavailable
    507                  Unschedulable             (the message says why)
    other                CargoholdError
    no answer            ManagerUnavailable        (the caller says so: ``unreachable``)

Every exception carries ``http_status`` and ``type`` in its ``detail`` (and ``fields``:
FastAPI's ``detail`` list of a 422).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from cargohold import errors
from cargohold.errors import CargoholdError, InvalidArgument, ManagerUnavailable

UNIX_BASE = "http://cargohold"  # the host part of URLs sent over a unix socket
TIMEOUT = 10.0  # seconds; the default of the commands' client

# (HTTP status, the error body's type) -> the class; a type a status does not carry (or
# none) falls back on the status alone (BY_STATUS)
ERRORS: dict[tuple[int, str], type[CargoholdError]] = {
    (400, "InvalidArgument"): InvalidArgument,
    (401, "Unauthenticated"): errors.Unauthenticated,
    (403, "PermissionDenied"): errors.PermissionDenied,
    (404, "NotFound"): errors.NotFound,
    (405, "MethodNotAllowed"): errors.MethodNotAllowed,
    (409, "AlreadyExists"): errors.AlreadyExists,
    (409, "WrongState"): errors.WrongState,
    (409, "Busy"): errors.Busy,
    (409, "Conflict"): errors.Busy,  # the state store's compare-and-swap gave up: try again
    (413, "PayloadTooLarge"): errors.PayloadTooLarge,
    (415, "UnsupportedMediaType"): errors.UnsupportedMediaType,
    (422, "InvalidArgument"): InvalidArgument,
    (503, "ManagerUnavailable"): ManagerUnavailable,
    (503, "StateStoreDamaged"): errors.StateStoreDamaged,
    (507, "Unschedulable"): errors.Unschedulable,
}
BY_STATUS: dict[int, type[CargoholdError]] = {
    400: InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    409: errors.WrongState,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: InvalidArgument,
    503: ManagerUnavailable,
    507: errors.Unschedulable,
}


@dataclass(frozen=True)
class Endpoint:
    """A manager URL, parsed: where httpx sends requests (``base_url``), and through which
    unix socket (``uds``) when it is one."""

    url: str  # as given
    base_url: str
    uds: str | None = None


def parse_url(url: str) -> Endpoint:
    """The endpoint of a manager URL (see the module docstring); InvalidArgument if it is
    none."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"bad manager URL {url!r}: expected http://HOST:PORT or unix:/PATH")
    if url.startswith("unix:"):
        path = url.removeprefix("unix:")
        if path.startswith("//"):  # unix:///run/x.sock
            path = path[2:]
        if not path:
            raise InvalidArgument(f"bad manager URL {url!r}: expected unix:/PATH")
        return Endpoint(url, UNIX_BASE, path)
    base = url if "://" in url else f"http://{url}"
    if not base.startswith(("http://", "https://")):
        raise InvalidArgument(f"bad manager URL {url!r}: expected http://HOST:PORT or unix:/PATH")
    return Endpoint(url, base.rstrip("/"))


def sync_client(
    url: str | Endpoint,
    timeout: float | httpx.Timeout = TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """A synchronous httpx client for the manager at ``url`` (``transport``: tests')."""
    return httpx.Client(**_options(url, timeout, transport, httpx.HTTPTransport))


def async_client(
    url: str | Endpoint,
    timeout: float | httpx.Timeout = TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """An asyncio httpx client for the manager at ``url`` (``transport``: tests').
    ``verify``: the TLS context of an https URL (trust, and a client certificate)."""
    opts = _options(url, timeout, transport, httpx.AsyncHTTPTransport)
    if verify is not None:
        opts["verify"] = verify
    return httpx.AsyncClient(**opts)


def _options(
    url: str | Endpoint, timeout: float | httpx.Timeout, transport: Any, unix: Any
) -> dict[str, Any]:
    """The httpx client's arguments, the same for both kinds of client (TLS settings and
    credentials, issue #16, go here). ``unix``: the transport class for a unix socket."""
    ep = url if isinstance(url, Endpoint) else parse_url(url)
    if transport is None and ep.uds is not None:
        transport = unix(uds=ep.uds)
    return {"base_url": ep.base_url, "timeout": timeout, "transport": transport}


def unreachable(url: str, e: BaseException) -> ManagerUnavailable:
    """The error for a request that got no answer (refused, timed out, no such socket)."""
    return ManagerUnavailable(f"no manager at {url}: {e or type(e).__name__}")


def error_class(status: int, etype: str) -> type[CargoholdError]:
    """The class of an error answer: by (status, type), else by status, else the root."""
    return ERRORS.get((status, etype)) or BY_STATUS.get(status) or CargoholdError


def error_from_response(resp: httpx.Response, url: str) -> CargoholdError:
    """The exception for an error answer of the manager at ``url`` (status >= 400)."""
    status = resp.status_code
    try:
        body = resp.json()
    except ValueError:
        body = None
    etype, message, detail = "", "", None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            etype = str(err.get("type") or "")
            message = str(err.get("message") or "")
        detail = body.get("detail")
        if not message and isinstance(detail, list):  # FastAPI's own 422 answer
            message = _fields_message(detail)
        elif not message and isinstance(detail, str):  # FastAPI's HTTPException
            message = detail
    if not message:
        message = (resp.text or "").strip()[:200] or f"HTTP {status}"
    extra: dict[str, Any] = {"http_status": status, "type": etype}
    if isinstance(detail, list):
        extra["fields"] = detail
    cls = error_class(status, etype)
    if cls is ManagerUnavailable:
        return ManagerUnavailable(f"manager at {url} is unavailable: {message}", **extra)
    if cls is CargoholdError:
        where = f"{resp.request.method} {resp.request.url.path}"
        return CargoholdError(
            f"manager at {url} failed ({where}: HTTP {status}): {message}", **extra
        )
    return cls(message, **extra)


def _fields_message(detail: list[Any]) -> str:
    parts = []
    for err in detail:
        if not isinstance(err, dict):
            parts.append(str(err))
            continue
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"
