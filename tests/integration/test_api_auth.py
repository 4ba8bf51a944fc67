"""Authentication and authorization of the manager's REST API, against a real manager
process over HTTPS with real certificates (tests.support.tls_manager.py):

- for EVERY operation of the live schema: no credential -> 401, a role without the route's
  permission -> 403, a role with it -> neither; an operation that declares no permission
  fails the test (a new route without a rule cannot slip in);
- the TCP socket refuses a client without certificate and token (401), with a certificate
  of another CA or an expired one (handshake refused), and plain HTTP; it goes on serving;
- the attacks of issue #16 that go through the REST API are refused without credentials;
- bearer tokens: made by an admin (shown once), scoped by role, expired, deleted;
  the unix socket (0600) needs a token; ``cargohold token`` and a client's credentials
  from a cluster directory.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.control.client import ManagerClient
from cargohold.control.transport import ClientCredentials
from cargohold.errors import PermissionDenied, Unauthenticated
from cargohold.security import ca as ca_mod
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import ROLE_PERMISSIONS, Permission
from tests.support.tls_manager import ROOT, TlsManager

PUBLIC = {("get", "/healthz"), ("get", "/livez")}  # open on purpose: probes
AGENT_ROUTE = "heartbeat (agent/<node> only)"
# an encrypted volume's data key: agents only, and the service checks it is the engine's node
DATA_KEY_ROUTE = "data-key (agent of the engine's node only)"
# the join route: a joining agent has no certificate yet, its join token is the credential
JOIN = {("post", "/api/v1/join")}
PARAMS = {
    "volume": "vol-x",
    "node": "node-1",
    "snapshot": "snap-x",
    "op": "op-x",
    "replica": "r-x",
    "token_id": "0123456789ab",
    "tenant": "team-x",
    "disk": "disk-x",
    "job": "job-x",
    "target": "tgt-x",
    "backup": "bk-x",
    "group": "grp-x",
}
# who holds no REST permission at all, and who holds which (certificates of this cluster)
NOBODY = ("engine", "vol-x")
PEOPLE = [("admin", "alice"), ("operator", "olga"), ("reader", "rita"), ("csi", "k8s")]


@pytest.fixture(scope="module")
def mgr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsManager]:
    m = TlsManager(tmp_path_factory.mktemp("auth"))
    m.start()
    yield m
    m.stop()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "delete", "patch")
    ]


def call(c: httpx.Client, method: str, path: str, op: dict[str, Any]) -> httpx.Response:
    url = path.format(**PARAMS)
    body: Any = None
    if "requestBody" in op:
        body = {"hold": 0} if path.endswith("/heartbeat") else {}
    return c.request(method.upper(), url, json=body)


def holder(perm: str) -> tuple[str, str]:
    if perm in (AGENT_ROUTE, DATA_KEY_ROUTE, Permission.HEARTBEAT.value):  # an agent, its node
        return ("agent", PARAMS["node"])
    for role, name in PEOPLE:
        if Permission(perm) in ROLE_PERMISSIONS[Role(role)]:
            return role, name
    raise AssertionError(f"no role holds {perm}")


def test_every_route_declares_a_permission_and_the_schema_shows_it(mgr: TlsManager) -> None:
    with mgr.client(None) as c:
        live = c.get("/openapi.json").json()
    published = json.loads((ROOT / "docs/api/openapi.json").read_text())
    assert live == published
    assert set(live["components"]["securitySchemes"]) == {"bearerAuth", "mutualTLS"}
    ops = operations(live)
    assert len(ops) >= 30
    for method, path, op in ops:
        perm = op.get("x-cargohold-permission")
        assert perm, f"{method.upper()} {path} declares no permission"
        if (method, path) in PUBLIC:
            assert perm == "none" and op["security"] == []
        elif (method, path) in JOIN:
            assert perm == "join token" and op["security"] == []
        else:
            assert perm in (AGENT_ROUTE, DATA_KEY_ROUTE) or perm in {p.value for p in Permission}, (
                perm
            )
            assert op["security"] == [{"bearerAuth": []}, {"mutualTLS": []}]
            assert {"401", "403"} <= set(op["responses"]), f"{method} {path}"


def test_every_operation_401_403_and_allowed(mgr: TlsManager) -> None:
    with mgr.client(None) as c:
        schema = c.get("/openapi.json").json()
    checked = 0
    for method, path, op in operations(schema):
        perm = op["x-cargohold-permission"]
        where = f"{method.upper()} {path}"
        if (method, path) in PUBLIC:
            with mgr.client(None) as c:
                assert call(c, method, path, op).status_code in (200, 503), where
            continue
        if (method, path) in JOIN:  # the body's join token is the credential
            with mgr.client(None) as c:
                assert call(c, method, path, op).status_code in (401, 422), where
            continue
        with mgr.client(None) as c:
            r = call(c, method, path, op)
            assert r.status_code == 401, f"{where}: {r.status_code} {r.text}"
            assert r.headers["www-authenticate"].startswith("Bearer"), where
            assert r.json()["error"]["type"] == "Unauthenticated"
        with mgr.client(*NOBODY) as c:
            r = call(c, method, path, op)
            assert r.status_code == 403, f"{where} as engine: {r.status_code} {r.text}"
            assert r.json()["error"]["type"] == "PermissionDenied"
        with mgr.client(*holder(perm)) as c:
            r = call(c, method, path, op)
            assert r.status_code not in (401, 403), f"{where} as {holder(perm)}: {r.text}"
        checked += 1
    assert checked >= 30


def test_a_bad_body_without_a_credential_is_401_not_422(mgr: TlsManager) -> None:
    """Authentication and the permission come before the body (control/auth.py): every
    operation with a body, over HTTPS, answers a stranger's malformed, mistyped or oversized
    body with 401 and a certificate without the permission with 403."""
    with mgr.client(None) as c:
        schema = c.get("/openapi.json").json()
    bad = [
        ({"content-type": "application/json"}, b"{not json"),
        ({"content-type": "text/plain"}, b"hello"),
        ({"content-type": "application/json"}, b" " * (2 << 20)),
    ]
    checked = 0
    for method, path, op in operations(schema):
        if "requestBody" not in op or (method, path) in JOIN:
            continue
        url = path.format(**PARAMS)
        for headers, body in bad:
            with mgr.client(None) as c:
                r = c.request(method.upper(), url, content=body, headers=headers)
                assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
            with mgr.client(*NOBODY) as c:
                r = c.request(method.upper(), url, content=body, headers=headers)
                assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.text}"
        checked += 1
    assert checked >= 12


def test_roles_each_permission_by_certificate(mgr: TlsManager) -> None:
    with mgr.client("reader", "rita") as c:
        assert c.get("/api/v1/volumes").status_code == 200
        assert c.post("/api/v1/volumes", json={"name": "v", "size_bytes": 4096}).status_code == 403
    with mgr.client("operator", "olga") as c:
        assert c.get("/api/v1/tokens").status_code == 403  # security: admins only
        assert c.post("/api/v1/nodes/node-1/cordon").status_code == 404  # allowed; no node
    with mgr.client("admin", "alice") as c:
        r = c.post("/api/v1/nodes/node-1/heartbeat", json={"hold": 0})
        assert r.status_code == 403  # an admin may not speak for a node
    with mgr.client("agent", "node-2") as c:
        r = c.post("/api/v1/nodes/node-1/heartbeat", json={"hold": 0})
        assert r.status_code == 403  # nor another node's agent
        assert c.get("/api/v1/volumes").status_code == 403
    with mgr.client("csi", "k8s", tenant="east") as c:  # a tenant's CSI driver reads nodes
        assert c.get("/api/v1/nodes").status_code == 200  # (topology, ControllerPublish)
        assert c.get("/api/v1/orphans").status_code == 403  # but nothing else of the cluster
    with mgr.client("reader", "rita", tenant="east") as c:  # a tenant's people never see nodes
        assert c.get("/api/v1/nodes").status_code == 403


def _refused(mgr: TlsManager, ctx: ssl.SSLContext) -> bool:
    """True when the handshake (or the first read after it, TLS 1.3) fails."""
    try:
        with httpx.Client(base_url=mgr.url, verify=ctx, timeout=5) as c:
            r = c.get("/api/v1/volumes")
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return r.status_code == 401


def test_the_tcp_socket_refuses_strangers_and_goes_on_serving(
    mgr: TlsManager, tmp_path: Path
) -> None:
    other = CertificateAuthority.create(tmp_path / "other-ca", mgr.cluster)
    foreign = tmp_path / "foreign"
    other.issue(Identity(mgr.cluster, Role.ADMIN, "mallory")).write(foreign)
    # trust our CA (to reach the manager) but present the other CA's admin certificate
    foreign_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign_ctx.check_hostname = False
    foreign_ctx.load_verify_locations(cafile=str(mgr.dir / "ca" / "trust.crt"))
    foreign_ctx.load_cert_chain(foreign / "tls.crt", foreign / "tls.key")
    real_now = ca_mod._now
    ca_mod._now = lambda: real_now() - dt.timedelta(days=3)  # issued 3 days ago, 24 h life
    try:
        expired = mgr.creds("admin", "expired")
    finally:
        ca_mod._now = real_now
    expired_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    expired_ctx.check_hostname = False
    expired_ctx.load_verify_locations(cafile=str(mgr.dir / "ca" / "trust.crt"))
    expired_ctx.load_cert_chain(expired / "tls.crt", expired / "tls.key")

    assert _refused(mgr, mgr.trust())  # TLS, no certificate, no token: 401
    assert _refused(mgr, foreign_ctx)
    assert _refused(mgr, expired_ctx)
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
        r = httpx.get(f"http://127.0.0.1:{mgr.port}/api/v1/volumes", timeout=5)
        assert r.status_code != 200
        raise httpx.ReadError("answered, but not with data")
    assert mgr.alive()
    with mgr.client("admin", "alice") as c:
        assert c.get("/api/v1/volumes").status_code == 200


def test_the_issue_attacks_are_refused_without_credentials(mgr: TlsManager) -> None:
    reg = {
        "address": "127.0.0.1",
        "replica_port": 9501,
        "disks": [{"name": "disk-0", "path": "/d1", "capacity_bytes": 100 << 30}],
    }
    with mgr.client("agent", "node-3") as c:
        assert c.put("/api/v1/nodes/node-3", json=reg).status_code == 200
    with mgr.client("admin", "alice") as c:
        r = c.post("/api/v1/volumes", json={"name": "victim", "size_bytes": 1 << 20, "replicas": 1})
        assert r.status_code == 201, r.text
    attacks = [
        ("DELETE", "/api/v1/volumes/victim", None),
        ("POST", "/api/v1/volumes/victim/attach", {"node": "node-3", "force": True}),
        ("PUT", "/api/v1/nodes/node-3", {**reg, "address": "10.6.6.6"}),
        (
            "POST",
            "/api/v1/nodes/node-3/disks",
            {"name": "etc", "path": "/etc", "capacity_bytes": 1 << 30},
        ),
    ]
    for method, path, body in attacks:
        with mgr.client(None) as c:
            r = c.request(method, path, json=body)
            assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
        with mgr.unix_client() as c:
            assert c.request(method, path, json=body).status_code == 401, path
    with mgr.client("admin", "alice") as c:  # nothing changed
        assert c.get("/api/v1/volumes/victim").json()["state"] != "deleting"
        node = c.get("/api/v1/nodes/node-3").json()
        assert node["address"] == "127.0.0.1"
        assert [d["name"] for d in c.get("/api/v1/disks").json()] == ["disk-0"]
        # an admin may not re-register a node's address either: only agent/node-3
        assert c.put("/api/v1/nodes/node-3", json={**reg, "address": "10.6.6.6"}).status_code == 403


def test_tokens_made_scoped_expired_and_deleted(mgr: TlsManager) -> None:
    assert stat.S_IMODE(os.stat(mgr.token_file).st_mode) == 0o600
    assert mgr.admin_token not in mgr.output()  # never in the log
    with mgr.client(None, token=mgr.admin_token) as c:
        made = c.post("/api/v1/tokens", json={"role": "reader", "name": "grafana"}).json()
        short = c.post(
            "/api/v1/tokens", json={"role": "operator", "name": "tmp", "ttl_seconds": 0.001}
        ).json()
        listed = c.get("/api/v1/tokens").json()
    assert made["token"].startswith("chk_") and made["role"] == "reader"
    assert all("token" not in t and "digest" not in t for t in listed)
    with mgr.client(None, token=made["token"]) as c:
        assert c.get("/api/v1/volumes").status_code == 200
        assert c.delete("/api/v1/volumes/victim").status_code == 403
    with mgr.client(None, token=short["token"]) as c:
        r = c.get("/api/v1/volumes")
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    wrong = made["token"][:-4] + "AAAA"
    with mgr.client(None, token=wrong) as c:
        r = c.get("/api/v1/volumes")
        assert r.status_code == 401 and wrong not in r.text
    with mgr.client("admin", "alice", token="chk_bogus") as c:  # a bad token beats a cert
        assert c.get("/api/v1/volumes").status_code == 401
    with mgr.unix_client(made["token"]) as c:
        assert c.get("/api/v1/volumes").status_code == 200
    with mgr.client(None, token=mgr.admin_token) as c:
        assert c.delete(f"/api/v1/tokens/{made['id']}").status_code == 200
    with mgr.client(None, token=made["token"]) as c:
        assert c.get("/api/v1/volumes").status_code == 401


def test_clients_use_a_cluster_directory_and_check_the_manager(
    mgr: TlsManager, tmp_path: Path
) -> None:
    cluster_dir = tmp_path / "cluster"
    (cluster_dir / "tls").mkdir(parents=True)
    for f in ("tls.crt", "tls.key", "ca.crt", "ca.crl"):
        (cluster_dir / "tls" / f).write_bytes((mgr.creds("admin", "alice") / f).read_bytes())
    creds = ClientCredentials.find(cluster_dir)
    with ManagerClient(mgr.url, credentials=creds) as c:
        assert c.volumes() is not None
    # a token-only client: the CA to check the manager, and a token file
    token_only = tmp_path / "token-only"
    (token_only / "tls").mkdir(parents=True)
    (token_only / "tls" / "ca.crt").write_bytes((mgr.dir / "ca" / "trust.crt").read_bytes())
    with ManagerClient(mgr.url, credentials=ClientCredentials.find(token_only)) as c:
        with pytest.raises(Unauthenticated):
            c.volumes()
    (token_only / "token").write_text(mgr.admin_token + "\n")
    with ManagerClient(mgr.url, credentials=ClientCredentials.find(token_only)) as c:
        assert c.volumes() is not None
    reader = tmp_path / "reader"
    (reader / "tls").mkdir(parents=True)
    for f in ("tls.crt", "tls.key", "ca.crt", "ca.crl"):
        (reader / "tls" / f).write_bytes((mgr.creds("reader", "rita") / f).read_bytes())
    with ManagerClient(mgr.url, credentials=ClientCredentials.find(reader)) as c:
        with pytest.raises(PermissionDenied):
            c.delete_volume("victim")
    # the client refuses a server that is not a manager (here: an agent's certificate)
    from cargohold.control.transport import check_manager

    with pytest.raises(Unauthenticated):
        check_manager(
            {"subjectAltName": [("URI", f"cargohold://{mgr.cluster}/agent/n")]}, None, "x"
        )
    with pytest.raises(Unauthenticated):
        check_manager(
            {"subjectAltName": [("URI", "cargohold://c-other/manager/m")]}, mgr.cluster, "x"
        )


def test_cargohold_token_commands(mgr: TlsManager) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CARGOHOLD_TLS_DIR": str(mgr.creds("admin", "alice")),
        "CARGOHOLD_API": mgr.url,
        "COLUMNS": "200",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cargohold", "token", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    made = cli("create", "--role", "reader", "--name", "cli-user", "--ttl", "30d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("chk_") and "\n" not in token  # only the token on stdout
    tid = token.split("_")[1]
    listed = cli("list", "-o", "json")
    rows = json.loads(listed.stdout)
    row = next(r for r in rows if r["id"] == tid)
    assert row["name"] == "cli-user" and row["expires"] - row["created"] == pytest.approx(
        30 * 86400
    )
    assert token not in listed.stdout
    assert cli("delete", tid).returncode == 0
    assert tid not in cli("list", "-o", "json").stdout
    env["CARGOHOLD_TLS_DIR"] = str(mgr.creds("reader", "rita"))
    denied = cli("list")
    assert denied.returncode == 8 and "may not" in denied.stderr  # 403


def test_a_manager_without_tls_dir_or_plaintext_refuses_to_start(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            *[sys.executable, "-m", "cargohold", "manager", "--state", f"sqlite:{tmp_path}/s.db"],
            *["--listen", "127.0.0.1:1", "--init"],
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CARGOHOLD_TLS_DIR": ""},
        timeout=60,
    )
    assert r.returncode == 2 and "--plaintext" in r.stdout + r.stderr
