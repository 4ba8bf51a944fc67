"""Who is calling the manager's API, and whether they may (``requires``).

A minimal implementation (issue #16, the joining part): the caller is the identity in the
client certificate it presented on the TLS connection (``security.tls``); the manager's
uvicorn protocol (``PeerProtocol``) puts it in the request's state when the connection is
made. A manager run without TLS has no way to know anyone: every caller is then the anonymous
``admin/plaintext`` and may do everything (the daemon said so loudly at start), which
keeps plaintext clusters working as before. A certificate named ``admin/plaintext`` is
refused: the CA does not issue that name (``ca_cmd``) and ``caller`` never takes it from
a certificate. Bearer tokens and the per-route table are the REST
authentication's part (the same ``requires`` signature).

Routes write ``dependencies=[Depends(requires(Permission.X))]``, or take the identity as a
parameter: ``ident: Identity = Depends(requires(Permission.X))``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from cargohold.errors import PermissionDenied, Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import Permission, allowed
from cargohold.security.tls import peer_identity

PEER_KEY = "cargohold_peer"  # the request state's key of the TLS peer's identity
PLAINTEXT_NAME = "plaintext"


class PeerProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol that records the TLS peer's identity for every request of
    the connection (asyncio calls ``connection_made`` once the handshake is done)."""

    def connection_made(self, transport: Any) -> None:
        self.app_state = {**self.app_state, PEER_KEY: peer_identity(transport)}
        super().connection_made(transport)


def caller(request: Request) -> Identity:
    """The identity of the request's sender; Unauthenticated when it shows none."""
    app_state = request.app.state
    if getattr(app_state, "plaintext", False):
        return Identity(getattr(app_state, "cluster_id", "") or "local", Role.ADMIN, PLAINTEXT_NAME)
    ident = request.scope.get("state", {}).get(PEER_KEY)
    if not isinstance(ident, Identity) or _anonymous(ident):
        raise Unauthenticated("present a client certificate issued by this cluster's CA")
    cluster = getattr(app_state, "cluster_id", "")
    if cluster and ident.cluster != cluster:
        raise Unauthenticated(f"certificate of cluster {ident.cluster}, this is {cluster}")
    return ident


def _anonymous(ident: Identity) -> bool:
    return ident.role is Role.ADMIN and ident.name == PLAINTEXT_NAME


def requires(perm: Permission) -> Callable[[Request], Awaitable[Identity]]:
    """A FastAPI dependency: the caller's identity, when its role holds ``perm``; 401 for
    no credential, 403 (PermissionDenied) for a role without it."""

    async def dependency(request: Request) -> Identity:
        ident = caller(request)
        if _anonymous(ident):
            return ident  # a plaintext manager: everything, as before issue #16 (said loudly)
        if not allowed(ident, perm):
            raise PermissionDenied(f"{ident} may not do this (needs permission {perm})")
        return ident

    return dependency


def require_agent(ident: Identity, node: str) -> None:
    """Only ``agent/<node>`` speaks for ``node`` (its registration, its certificates)."""
    if _anonymous(ident):
        return  # a plaintext manager knows nobody: as before issue #16
    if ident.role is not Role.AGENT or ident.name != node:
        raise PermissionDenied(f"{ident} may not act for node {node}: only agent/{node} may")
