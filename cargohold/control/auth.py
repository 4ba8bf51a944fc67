"""Who calls the manager's REST API, and whether they may: ``caller(request)`` and the
FastAPI dependency ``requires(Permission)`` that every route declares.

Minimal version (the tenants work needs the caller's identity; the full one — bearer tokens,
WWW-Authenticate, the OpenAPI security schemes — comes with the REST authentication work):

- over TLS (``cargohold manager --tls-dir``): the identity is the one in the client
  certificate the TLS handshake verified (security/tls.py: the cluster's CA, its CRL).
  ``PeerH11Protocol`` puts it in the ASGI scope's ``state`` of every request on that
  connection. No certificate with a cargohold identity, or one of another cluster:
  Unauthenticated (401). A role without the permission: PermissionDenied (403).
- without TLS (``--plaintext``, announced loudly at start): every caller is the admin.

The manager calls ``install(app, service)``; ``requires`` is used in api_*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from cargohold.errors import PermissionDenied, Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import Permission, allowed
from cargohold.security.tls import peer_identity

TLS_KEY = "cargohold.tls"  # in the scope's state: the connection is TLS
PEER_KEY = "cargohold.peer"  # ... and the identity its client certificate carries (or None)
PLAINTEXT_NAME = "plaintext"


class PeerH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, remembering the connection's verified peer identity:
    uvicorn copies ``app_state`` into every request's scope, so a per-connection copy of it
    carries the identity to ``caller``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn's stream transport
        tls = transport.get_extra_info("ssl_object") is not None
        self.app_state = {**self.app_state, TLS_KEY: tls, PEER_KEY: peer_identity(transport)}


def install(app: FastAPI, cluster_id: Callable[[], str]) -> None:
    """Tell ``caller`` which cluster the manager serves (certificates of others: 401)."""
    app.state.cargohold_cluster = cluster_id


def _cluster(request: Request) -> str:
    get = getattr(request.app.state, "cargohold_cluster", None)
    return (get() if get is not None else "") or ""


def caller(request: Request) -> Identity:
    """The identity of the request's caller (module docstring); Unauthenticated if none."""
    state: dict[str, Any] = request.scope.get("state") or {}
    cluster = _cluster(request)
    if not state.get(TLS_KEY):
        return Identity(cluster or "local", Role.ADMIN, PLAINTEXT_NAME)
    ident = state.get(PEER_KEY)
    if not isinstance(ident, Identity):
        raise Unauthenticated("no client certificate with a cargohold identity was presented")
    if cluster and ident.cluster != cluster:
        raise Unauthenticated(f"a certificate of cluster {ident.cluster}; this is {cluster}")
    return ident


def requires(perm: Permission) -> Callable[[Request], Identity]:
    """A FastAPI dependency: the caller, if its role holds ``perm`` (and, for a tenant's
    identity, ``perm`` is one a tenant keeps); else PermissionDenied."""

    def dependency(request: Request) -> Identity:
        ident = caller(request)
        if not allowed(ident, perm):
            raise PermissionDenied(f"{ident} may not do this (needs permission {perm.value})")
        return ident

    dependency.__name__ = f"requires_{perm.name.lower()}"
    return dependency
