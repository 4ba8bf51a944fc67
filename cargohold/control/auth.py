"""Who calls the manager's REST API, and whether they may: authentication and the
permission every route declares.

A request is authenticated by, in this order:

1. ``Authorization: Bearer chk_...``: a token of the state store (``token_store.py``);
   a bad, unknown or expired token is 401 even when a certificate was presented too;
2. the client certificate of its TLS connection (the manager's TCP socket asks for one,
   optionally): its identity URI (security/identity.py), of this cluster;
3. nothing: 401 ``Unauthenticated`` with ``WWW-Authenticate: Bearer realm="cargohold"``.

The unix socket (mode 0600) carries no TLS: a bearer token is required there too. A manager
started with ``--plaintext`` authenticates nobody: a request without a credential acts as
``admin/plaintext`` with every permission (a benchmark or a test; it says so loudly).

Every route declares one permission with ``requires(Permission.X)`` (security/policy.py);
a role without it is 403 ``PermissionDenied``. The agents' routes (``PUT /api/v1/nodes/N``,
the heartbeat) take ``requires_node_agent()``: only ``agent/N``. ``/healthz`` and
``/livez`` take ``public()``. The OpenAPI schema shows each operation's permission
(``x-cargohold-permission``) and its security requirement (``add_security``).

The peer's certificate is read once per connection: ``PeerProtocol`` (the manager's
uvicorn protocol class) puts the identity into the ASGI scope's ``state``.

Authentication and the route's permission come before its body: a route that takes a body
(``api_json.JSONRoute``) runs its permission dependency (``authorize_first``) before it reads
a byte of it, so a caller without a credential gets 401 (and one without the permission
403) whatever the body — never 413, 415 or 422, which would let strangers probe the schema
and make the manager read their bodies. The identity is kept in the request's scope: the
dependency FastAPI runs again afterwards does not look the token up twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute

from cargohold.control.repository import Repository
from cargohold.control.token_store import TokenStore
from cargohold.errors import PermissionDenied, Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import Permission, allowed
from cargohold.security.tls import peer_identity

PEER = "cargohold_peer"  # scope["state"]: the TLS peer's Identity (or None)
VIA = "cargohold_via"  # scope["state"]: "tls", "tcp" (plaintext) or "unix"
CALLER = "cargohold_caller"  # scope: the request's authenticated Identity, once known
PERMISSION_EXT = "x-cargohold-permission"
NO_PERMISSION = "none"  # the permission a public route shows in the schema
AGENT_OF_NODE = "heartbeat (agent/<node> only)"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cargohold"'}
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "a token chk_<id>_<secret> (cargohold token create)",
    },
    "mutualTLS": {
        "type": "mutualTLS",
        "description": "a client certificate of the cluster's CA (identity URI "
        "cargohold://<cluster>/<role>/<name>)",
    },
}


@dataclass
class Auth:
    """How a manager authenticates (one per API; ``app.state.auth``)."""

    repo: Repository | None  # None: nobody is authenticated (plaintext, unit tests, schema)
    plaintext: bool = False

    @property
    def tokens(self) -> TokenStore:
        assert self.repo is not None
        return TokenStore(self.repo.store)

    @classmethod
    def disabled(cls) -> Auth:
        return cls(None, plaintext=True)


ANONYMOUS_ADMIN = "plaintext"


async def caller(request: Request) -> Identity:
    """The identity of the request's sender (module docstring); Unauthenticated if none.
    Worked out once per request (kept in its scope)."""
    known = request.scope.get(CALLER)
    if isinstance(known, Identity):
        return known
    ident = await _authenticate(request)
    request.scope[CALLER] = ident
    return ident


async def _authenticate(request: Request) -> Identity:
    auth: Auth = getattr(request.app.state, "auth", None) or Auth.disabled()
    state = request.scope.get("state") or {}
    header = request.headers.get("authorization")
    cluster = auth.repo.cluster_id if auth.repo is not None else ""
    if header is not None and auth.repo is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be: Bearer chk_...")
        return await auth.tokens.identify(token.strip(), cluster)
    peer = state.get(PEER)
    if isinstance(peer, Identity) and auth.repo is not None:
        if peer.cluster != cluster:
            raise Unauthenticated(f"a certificate of cluster {peer.cluster}, this is {cluster}")
        return peer
    if auth.plaintext:
        return Identity(cluster or "plaintext", Role.ADMIN, ANONYMOUS_ADMIN)
    if state.get(VIA) == "unix":
        raise Unauthenticated("no credential: the unix socket needs a bearer token")
    raise Unauthenticated("no credential: present a client certificate or a bearer token")


def _anonymous_admin(request: Request, ident: Identity) -> bool:
    auth: Auth | None = getattr(request.app.state, "auth", None)
    return (auth is None or auth.plaintext) and ident.name == ANONYMOUS_ADMIN


Dependency = Callable[[Request], Awaitable[Identity]]


def requires(perm: Permission) -> Dependency:
    """A FastAPI dependency: the caller's Identity, if its role (and tenant) has ``perm``;
    Unauthenticated or PermissionDenied otherwise."""

    async def dependency(request: Request) -> Identity:
        ident = await caller(request)
        if not allowed(ident, perm) and not _anonymous_admin(request, ident):
            raise PermissionDenied(f"{ident} may not do this (needs permission {perm})")
        return ident

    dependency.permission = str(perm)  # type: ignore[attr-defined]
    return dependency


def requires_node_agent(param: str = "node") -> Dependency:
    """Only the agent of the node the path names (``agent/<node>``): registration and
    heartbeats. An admin may not speak for a node either."""

    async def dependency(request: Request) -> Identity:
        ident = await caller(request)
        if _anonymous_admin(request, ident):
            return ident
        node = request.path_params.get(param)
        if not allowed(ident, Permission.HEARTBEAT) or ident.name != node:
            raise PermissionDenied(f"{ident} may not speak for node {node} (only agent/{node})")
        return ident

    dependency.permission = AGENT_OF_NODE  # type: ignore[attr-defined]
    return dependency


AGENT_OF_ENGINE = "data-key (agent of the engine's node only)"


def requires_engine_agent() -> Dependency:
    """Only a node agent (``agent/<node>``), and the service checks it is the agent of the
    node the volume's engine is assigned to (``KeyCalls.data_key``): a volume's data key.
    No other role, not even an admin; on a ``--plaintext`` manager, the anonymous caller."""

    async def dependency(request: Request) -> Identity:
        ident = await caller(request)
        if _anonymous_admin(request, ident):
            return ident
        if ident.role is not Role.AGENT or not allowed(ident, Permission.HEARTBEAT):
            raise PermissionDenied(f"{ident} may not fetch data keys (only node agents)")
        return ident

    dependency.permission = AGENT_OF_ENGINE  # type: ignore[attr-defined]
    return dependency


def plaintext_caller(request: Request, ident: Identity) -> bool:
    """The caller is the anonymous admin of a ``--plaintext`` manager (no authentication)."""
    return _anonymous_admin(request, ident)


def public() -> Dependency:
    """No credential needed (health and liveness probes)."""

    async def dependency(request: Request) -> Identity:
        return Identity("public", Role.READER, "anonymous")

    dependency.permission = NO_PERMISSION  # type: ignore[attr-defined]
    return dependency


def route_permission(route: APIRoute) -> str | None:
    """The permission a route declared (None: none, which ``add_security`` refuses)."""
    for dep in route.dependant.dependencies:
        perm = getattr(dep.call, "permission", None)
        if perm is not None:
            return str(perm)
    return None


async def authorize_first(route: APIRoute, request: Request) -> None:
    """Run ``route``'s permission dependency now, before its body is read (module
    docstring): Unauthenticated or PermissionDenied as the route itself would raise. Every
    permission dependency here takes the request alone."""
    for dep in route.dependant.dependencies:
        if getattr(dep.call, "permission", None) is not None:
            await dep.call(request)  # type: ignore[misc]
            return


def add_security(app: FastAPI) -> None:
    """Check every route declares a permission (ValueError naming the first that does not)
    and put the permissions and security schemes into the app's OpenAPI schema."""
    perms: dict[tuple[str, str], str] = {}
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        perm = route_permission(route)
        if perm is None:
            raise ValueError(
                f"route {sorted(route.methods or ())} {route.path} declares no permission"
            )
        for method in route.methods or ():
            perms[(method.lower(), route.path)] = perm
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                perm = perms.get((method, path))
                if perm is None:
                    continue
                op[PERMISSION_EXT] = perm
                op["security"] = (
                    []
                    if perm in (NO_PERMISSION, JOIN_TOKEN)
                    else [{"bearerAuth": []}, {"mutualTLS": []}]
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def make_protocol(base: type) -> type:
    """uvicorn's HTTP protocol class ``base``, noting each connection's TLS peer (its
    certificate's identity) and the socket kind in the scope's ``state``."""

    class PeerProtocol(base):  # type: ignore[misc]  # uvicorn's class, chosen at run time
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            unix = sock is not None and sock.family.name == "AF_UNIX"
            tls = transport.get_extra_info("ssl_object") is not None
            self.app_state: dict[str, Any] = {
                **self.app_state,
                PEER: peer_identity(transport) if tls else None,
                VIA: "unix" if unix else "tls" if tls else "tcp",
            }
            super().connection_made(transport)

    PeerProtocol.__name__ = f"Peer{base.__name__}"
    return PeerProtocol


def need(perm: Permission) -> Any:
    """``dependencies=[need(Permission.X)]`` on a route: the short form of
    ``Depends(requires(Permission.X))``."""
    return Depends(requires(perm))


AGENT = Depends(requires_node_agent())  # the agents' own routes: agent/<node> only
PUBLIC = Depends(public())  # /healthz, /livez


def require_agent(ident: Identity, node: str) -> None:
    """Only ``agent/<node>`` speaks for ``node`` (its certificates, renewals and engines'
    certificates); the anonymous admin of a ``--plaintext`` manager too."""
    if ident.name == ANONYMOUS_ADMIN and ident.role is Role.ADMIN:
        return
    if ident.role is not Role.AGENT or ident.name != node:
        raise PermissionDenied(f"{ident} may not act for node {node}: only agent/{node} may")


JOIN_TOKEN = "join token"  # the permission /api/v1/join shows: its body's token is the credential


def join_token() -> Dependency:
    """No certificate yet: the join token in the body authenticates (enrollment.py)."""

    async def dependency(request: Request) -> Identity:
        return Identity("public", Role.READER, "joining-agent")

    dependency.permission = JOIN_TOKEN  # type: ignore[attr-defined]
    return dependency
