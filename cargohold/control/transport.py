"""The one HTTP layer to the manager's REST API: URLs, httpx clients, error answers.

Used by every client of the manager: the ``cargohold`` commands, the launcher and the CSI
driver (through ``control/client.py``, synchronous) and the node agents
(``agent/manager_link.py``, asyncio). TLS and authentication are here, once, and every
client has them (``ClientCredentials``):

- a client certificate (and the CA that signed the manager's) from a credentials
  directory: $CARGOHOLD_TLS_DIR, else ``<cluster dir>/tls/`` (``cargohold up`` writes an
  admin certificate there). A directory with only ``ca.crt`` verifies the manager and
  presents no certificate (a token-only client);
- a bearer token read from a FILE: $CARGOHOLD_TOKEN_FILE, else ``<cluster dir>/token``;
  never the token itself on a command line (``ps`` shows those) or in the environment.
  A client of a unix socket in a cluster directory (``DIR/api.sock``) uses that
  directory's ``DIR/token`` (the socket is mode 0600: its owner reads both);
- the manager's certificate is verified against that CA, and its identity must be
  ``manager/*`` of the client's own cluster (``check_manager``): host names are not checked
  (security/tls.py says why).

Manager URLs (``parse_url``):

    http://HOST:PORT, https://HOST:PORT    as given (a trailing / dropped)
    HOST:PORT                              http://HOST:PORT
    unix:/PATH, unix:///PATH               the unix socket /PATH (a relative PATH is taken
                                           from the working directory)

Error answers (``error_from_response``) become the one exception tree, by the HTTP status
and the ``type`` of the answer's ``{"error": {"type", "message"}}`` body; this is the
error table of docs/control-plane.md, read backwards (a test keeps the two equal):

    401                  Unauthenticated
    403                  PermissionDenied
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

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cargohold import errors
from cargohold.control.settings import ClientSettings
from cargohold.errors import CargoholdError, ConfigError, InvalidArgument, ManagerUnavailable
from cargohold.security.identity import Identity, Role, from_peercert
from cargohold.security.tls import CA_FILE, CERT_FILE, Credentials
from cargohold.settings import ProcessSettings

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


TOKEN_FILE = "token"  # in the cluster directory
TLS_DIR = "tls"  # in the cluster directory


@dataclass(frozen=True)
class ClientCredentials:
    """What a client presents to the manager (the module docstring): a credentials
    directory and/or a file holding a bearer token."""

    tls_dir: Path | None = None
    token_file: Path | None = None

    @classmethod
    def find(cls, dir: str | os.PathLike[str] | None = None) -> ClientCredentials:
        """$CARGOHOLD_TLS_DIR and $CARGOHOLD_TOKEN_FILE, else what the cluster directory
        ``dir`` (default: $CARGOHOLD_DIR, ~/.cargohold) holds; nothing if it holds none."""
        settings = ClientSettings()
        base = Path(dir or settings.dir).expanduser()
        tls = ProcessSettings().tls_dir or None
        token = settings.token_file or None
        if tls is None and (base / TLS_DIR / CA_FILE).exists():
            tls = str(base / TLS_DIR)
        if token is None and (base / TOKEN_FILE).exists():
            token = str(base / TOKEN_FILE)
        return cls(Path(tls) if tls else None, Path(token) if token else None)

    @classmethod
    def for_endpoint(cls, ep: Endpoint) -> ClientCredentials:
        """``find()``; but a unix socket in a local cluster's directory (``cargohold up``:
        ``DIR/api.sock``) is reached with that directory's credentials."""
        if ep.uds is not None:
            here = Path(ep.uds).parent
            if (here / TOKEN_FILE).exists() and not ClientSettings().token_file:
                return cls.find(here)
        return cls.find()

    @classmethod
    def of_daemon(cls) -> ClientCredentials:
        """A daemon's (a node agent's): its own certificate from $CARGOHOLD_TLS_DIR, never a
        person's token or certificate from a cluster directory."""
        tls = ProcessSettings().tls_dir or None
        return cls(Path(tls) if tls else None, None)

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            text = self.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the token file {self.token_file}: {e}") from None
        if not text:
            raise ConfigError(f"the token file {self.token_file} is empty")
        return text

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context to reach an https:// manager with (None: the system's defaults)."""
        if self.tls_dir is None:
            return None
        if (self.tls_dir / CERT_FILE).exists():
            return Credentials.load(self.tls_dir).client_context()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # the identity URI is checked instead (check_manager)
        try:
            ctx.load_verify_locations(cafile=str(self.tls_dir / CA_FILE))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load {self.tls_dir / CA_FILE}: {e}") from None
        return ctx

    def cluster(self) -> str | None:
        """The cluster of our own certificate (None: we present none)."""
        if self.tls_dir is None or not (self.tls_dir / CERT_FILE).exists():
            return None
        return Credentials(self.tls_dir).identity().cluster


def check_manager(peercert: dict[str, Any] | None, cluster: str | None, url: str) -> Identity:
    """The identity of the server at ``url``: a manager (of ``cluster``, when known), else
    Unauthenticated: a client never sends its requests (or its token) to anyone else."""
    ident = from_peercert(peercert)
    if ident is None or ident.role is not Role.MANAGER:
        raise errors.Unauthenticated(f"the server at {url} is not a cargohold manager ({ident})")
    if cluster is not None and ident.cluster != cluster:
        raise errors.Unauthenticated(
            f"the manager at {url} serves cluster {ident.cluster}, not ours ({cluster})"
        )
    return ident


def _peercert(response: httpx.Response) -> dict[str, Any] | None:
    stream = response.extensions.get("network_stream")
    sslobj = stream.get_extra_info("ssl_object") if stream is not None else None
    return sslobj.getpeercert() if sslobj is not None else None


def sync_client(
    url: str | Endpoint,
    timeout: float | httpx.Timeout = TIMEOUT,
    transport: httpx.BaseTransport | None = None,
    credentials: ClientCredentials | None = None,
) -> httpx.Client:
    """A synchronous httpx client for the manager at ``url`` (``transport``: tests'),
    presenting ``credentials`` (default: ``ClientCredentials.find()``)."""
    opts, check = _options(url, timeout, transport, httpx.HTTPTransport, credentials)

    def verify(response: httpx.Response) -> None:
        check(response)

    return httpx.Client(**opts, event_hooks={"response": [verify]})


def async_client(
    url: str | Endpoint,
    timeout: float | httpx.Timeout = TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
    credentials: ClientCredentials | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """An asyncio httpx client for the manager at ``url`` (``transport``: tests'),
    presenting ``credentials`` (default: ``ClientCredentials.find()``). ``verify``: a TLS
    context made elsewhere for an https URL (a joining agent's: trust, no certificate yet;
    then its own), instead of the credentials' files."""
    opts, check = _options(url, timeout, transport, httpx.AsyncHTTPTransport, credentials)
    if verify is not None and transport is None and opts["base_url"].startswith("https://"):
        opts["transport"] = httpx.AsyncHTTPTransport(verify=verify)

    async def verify_answer(response: httpx.Response) -> None:
        check(response)

    return httpx.AsyncClient(**opts, event_hooks={"response": [verify_answer]})


def _options(
    url: str | Endpoint,
    timeout: float | httpx.Timeout,
    transport: Any,
    kind: Any,
    credentials: ClientCredentials | None,
) -> tuple[dict[str, Any], Any]:
    """The httpx client's arguments, the same for both kinds of client, and the check of
    each answer's server. ``kind``: the transport class (for a unix socket, and TLS)."""
    ep = url if isinstance(url, Endpoint) else parse_url(url)
    creds = credentials if credentials is not None else ClientCredentials.for_endpoint(ep)
    headers = {}
    if (token := creds.token()) is not None:
        headers["Authorization"] = f"Bearer {token}"
    tls = ep.base_url.startswith("https://")
    if transport is None and ep.uds is not None:
        # plain HTTP over the socket: a TLS context that trusts nothing, because httpx's
        # default loads certifi's CA bundle (~30 ms of every CLI command) for TLS it never
        # speaks here
        transport = kind(uds=ep.uds, verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    elif transport is None and tls:
        ctx = creds.ssl_context()
        transport = kind(verify=ctx) if ctx is not None else None
    cluster = creds.cluster() if tls else None

    def check(response: httpx.Response) -> None:
        if tls and response.request.url.scheme == "https":
            cert = _peercert(response)
            if cert is not None or transport is None or isinstance(transport, kind):
                check_manager(cert, cluster, ep.url)

    opts = {"base_url": ep.base_url, "timeout": timeout, "transport": transport}
    return {**opts, "headers": headers}, check


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
