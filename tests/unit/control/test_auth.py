"""control/auth.py's decisions on ASGI scopes as uvicorn builds them (the handshake itself is
tests/integration/test_tenants.py's): the connection's TLS flag and peer identity in the
scope's state, the cluster the manager serves, the permission a route requires."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from starlette.requests import Request

from cargohold.control import auth
from cargohold.errors import PermissionDenied, Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import Permission

C = "c-" + "1" * 32


def request(state: dict[str, Any], cluster: str = C) -> Request:
    app = FastAPI()
    auth.install(app, lambda: cluster)
    return Request({"type": "http", "app": app, "state": state, "headers": []})


def tls(ident: Identity | None) -> dict[str, Any]:
    return {auth.TLS_KEY: True, auth.PEER_KEY: ident}


def test_the_certificate_is_the_caller() -> None:
    a = Identity(C, Role.CSI, "k8s-a", tenant="team-a")
    assert auth.caller(request(tls(a))) == a


def test_no_identity_over_tls_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated, match="no client certificate"):
        auth.caller(request(tls(None)))


def test_another_clusters_certificate_is_unauthenticated() -> None:
    other = Identity("c-" + "2" * 32, Role.ADMIN, "alice")
    with pytest.raises(Unauthenticated, match="this is " + C):
        auth.caller(request(tls(other)))


def test_a_plaintext_manager_takes_everyone_as_the_admin() -> None:
    ident = auth.caller(request({}))
    assert ident.role is Role.ADMIN and ident.tenant is None and ident.cluster == C


def test_requires_checks_the_role_and_the_tenant() -> None:
    a = Identity(C, Role.CSI, "k8s-a", tenant="team-a")
    reader = Identity(C, Role.READER, "bob", tenant="team-a")
    write = auth.requires(Permission.VOLUMES_WRITE)
    assert write(request(tls(a))) == a
    with pytest.raises(PermissionDenied, match="volumes:write"):
        write(request(tls(reader)))
    assert auth.requires(Permission.NODES_READ)(request(tls(a))) == a  # topology, publish
    with pytest.raises(PermissionDenied):  # a tenant's people: no node listings
        auth.requires(Permission.NODES_READ)(request(tls(reader)))
    with pytest.raises(PermissionDenied):  # nor tenants, even as a tenant's admin
        auth.requires(Permission.TENANTS)(request(tls(Identity(C, Role.ADMIN, "x", "team-a"))))
    assert auth.requires(Permission.TENANTS)(request(tls(Identity(C, Role.ADMIN, "root"))))
