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
