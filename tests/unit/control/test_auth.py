"""control/auth.py and token_store.py without sockets: tokens (made, checked, expired,
refused roles), a route without a permission refused by ``add_security``, and where a
client finds its credentials (transport.ClientCredentials)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from cargohold.control.auth import add_security, need
from cargohold.control.state import open_store
from cargohold.control.token_store import TokenStore
from cargohold.control.transport import ClientCredentials, parse_url
from cargohold.errors import InvalidArgument, NotFound, Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import Permission

CLUSTER = "c-" + "1" * 32


async def test_tokens_are_stored_as_digests_and_checked() -> None:
    store = open_store("memory:")
    tokens = TokenStore(store)
    rec, token = await tokens.create("reader", "ci", ttl=60, now=1000.0)
    raw = b"".join(e.value for e in await store.range("/tokens/"))
    assert token.encode() not in raw and rec.digest.encode() in raw
    assert await tokens.identify(token, CLUSTER, now=1030.0) == Identity(CLUSTER, Role.READER, "ci")
    with pytest.raises(Unauthenticated, match="expired"):
        await tokens.identify(token, CLUSTER, now=1060.0)
    with pytest.raises(Unauthenticated, match="wrong secret"):
        await tokens.identify(token[:-3] + "AAA", CLUSTER, now=1030.0)
    with pytest.raises(Unauthenticated, match="malformed"):
        await tokens.identify("hunter2", CLUSTER)
    with pytest.raises(InvalidArgument, match="cannot carry role"):
        await tokens.create("agent", "node-1")
    assert [t.id for t in await tokens.list()] == [rec.id]
    await tokens.delete(rec.id)
    with pytest.raises(Unauthenticated, match="unknown"):
        await tokens.identify(token, CLUSTER, now=1030.0)
    with pytest.raises(NotFound):
        await tokens.delete(rec.id)


def test_a_route_without_a_permission_is_refused() -> None:
    app = FastAPI()

    @app.get("/ok", dependencies=[need(Permission.STATUS_READ)])
    async def ok() -> dict[str, bool]:
        return {}

    add_security(app)
    assert app.openapi()["paths"]["/ok"]["get"]["x-cargohold-permission"] == "status:read"

    @app.get("/forgotten")
    async def forgotten() -> dict[str, bool]:
        return {}

    with pytest.raises(ValueError, match="/forgotten declares no permission"):
        add_security(app)


def test_where_a_client_finds_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARGOHOLD_TLS_DIR", raising=False)
    monkeypatch.delenv("CARGOHOLD_TOKEN_FILE", raising=False)
    assert ClientCredentials.find(tmp_path) == ClientCredentials(None, None)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.crt").write_text("x")
    (tmp_path / "token").write_text("chk_x\n")
    assert ClientCredentials.find(tmp_path) == ClientCredentials(
        tmp_path / "tls", tmp_path / "token"
    )
    assert ClientCredentials.find(tmp_path).token() == "chk_x"
    # a unix socket in a cluster directory: that directory's token
    ep = parse_url(f"unix:{tmp_path}/api.sock")
    assert ClientCredentials.for_endpoint(ep).token_file == tmp_path / "token"
    monkeypatch.setenv("CARGOHOLD_TOKEN_FILE", str(tmp_path / "other"))
    monkeypatch.setenv("CARGOHOLD_TLS_DIR", str(tmp_path / "mine"))
    assert ClientCredentials.find(tmp_path) == ClientCredentials(
        tmp_path / "mine", tmp_path / "other"
    )
    # a daemon never takes a person's token
    assert ClientCredentials.of_daemon() == ClientCredentials(tmp_path / "mine", None)


def test_the_route_table_of_security_md_is_the_schema() -> None:
    import json
    import re

    root = Path(__file__).resolve().parents[3]
    schema = json.loads((root / "docs/api/openapi.json").read_text())
    want = {
        (m.upper(), p, o["x-cargohold-permission"])
        for p, ops in schema["paths"].items()
        for m, o in ops.items()
    }
    doc = (root / "docs/security.md").read_text()
    got = set()
    for perm, routes in re.findall(r"^\| `([^`]+)` \| (`[A-Z]+ /.*) \|$", doc, re.M):
        for method, path in re.findall(r"`([A-Z]+) (/[^`]*)`", routes):
            got.add((method, path, perm))
    assert got == want


# --- authentication before the body ----------------------------------------------------------

BAD_BODIES = [  # (content type, body): each refused with 413, 415 or 422 once authorized
    ("application/json", b"{"),  # not JSON
    ("application/json", b'{"size_bytes": NaN}'),  # not strict JSON
    ("application/json", b"[1, 2, 3]"),  # JSON, but not the route's shape
    ("text/plain", b"hello"),  # not application/json
    ("application/json", b" " * (2 << 20)),  # above max_request_bytes
]
PATH_PARAMS = {
    "volume": "vol-x",
    "node": "node-1",
    "snapshot": "snap-x",
    "group": "group-x",
    "op": "op-x",
    "replica": "r-x",
    "token_id": "0123456789ab",
    "tenant": "team-x",
    "disk": "disk-x",
}
JOIN_ROUTE = ("post", "/api/v1/join")  # its body's join token is the credential


async def test_no_credential_is_401_and_no_permission_403_whatever_the_body() -> None:
    """Every operation of the schema that takes a body: without a credential 401, with a
    role that lacks the permission 403, for any bad body (malformed, non-strict, the wrong
    shape, the wrong content type, too large); the body's own error only for a caller who
    may call the route. A new route with a body is covered by being in the schema."""
    import httpx

    from cargohold.control.api import build
    from cargohold.control.auth import Auth
    from cargohold.control.repository import Repository
    from cargohold.control.service import Service
    from cargohold.control.settings import ManagerSettings
    from cargohold.security.policy import ROLE_PERMISSIONS

    repo = Repository(open_store("memory:"))
    repo.cluster_id = CLUSTER
    service = Service(repo, ManagerSettings(), "memory", "t")
    tokens = TokenStore(repo.store)
    _, reader = await tokens.create("reader", "rita")
    _, admin = await tokens.create("admin", "alice")
    app = build(service, Auth(repo))
    ops = [
        (method, path, op)
        for path, methods in app.openapi()["paths"].items()
        for method, op in methods.items()
        if "requestBody" in op and (method, path) != JOIN_ROUTE
    ]
    assert len(ops) >= 12, [f"{m} {p}" for m, p, _ in ops]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

        async def send(method: str, path: str, kind: str, body: bytes, token: str | None):  # type: ignore[no-untyped-def]
            headers = {"content-type": kind}
            if token:
                headers["authorization"] = f"Bearer {token}"
            return await c.request(
                method.upper(), path.format(**PATH_PARAMS), content=body, headers=headers
            )

        for method, path, op in ops:
            where = f"{method.upper()} {path}"
            perm = op["x-cargohold-permission"]
            reader_may = perm in {p.value for p in ROLE_PERMISSIONS[Role.READER]}
            admin_may = perm in {p.value for p in ROLE_PERMISSIONS[Role.ADMIN]}
            for kind, body in BAD_BODIES:
                r = await send(method, path, kind, body, None)
                assert r.status_code == 401, f"{where} {body[:20]!r}: {r.status_code} {r.text}"
                assert r.json()["error"]["type"] == "Unauthenticated"
                assert r.headers["www-authenticate"].startswith("Bearer")
                if not reader_may:
                    r = await send(method, path, kind, body, reader)
                    assert r.status_code == 403, f"{where} as reader: {r.status_code} {r.text}"
                r = await send(method, path, kind, body, admin)
                if not admin_may:  # the agents' routes: an admin never speaks for a node
                    assert r.status_code == 403, f"{where} as admin: {r.status_code}"
                else:  # the body's own error, now that the caller may ask
                    assert r.status_code in (413, 415, 422), f"{where}: {r.status_code} {r.text}"
        # the join route: no credential but its body (a malformed one is the body's error)
        r = await send(*JOIN_ROUTE, "application/json", b"{", None)
        assert r.status_code == 422
