"""ManagerClient against canned answers (httpx.MockTransport): the URL of every route, unix
sockets, error answers mapped to the exception tree, discovery through cluster.json, and
waits that give up at their deadline."""

from __future__ import annotations

import http.server
import json
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.control.client import (
    ManagerClient,
    OperationFailed,
    WaitTimeout,
    error_from_response,
    local_api,
)
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
    Unschedulable,
    WrongState,
)

Handler = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.5)


def client(handler: Handler, url: str = "http://manager:9600", **kw: Any) -> ManagerClient:
    clock = FakeClock()
    kw.setdefault("clock", clock)
    kw.setdefault("sleep", clock.sleep)
    return ManagerClient(url, transport=httpx.MockTransport(handler), **kw)


class Recorder:
    def __init__(self, answer: Any = None) -> None:
        self.answer = {} if answer is None else answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=self.answer)

    @property
    def last(self) -> tuple[str, str, str, Any]:
        r = self.requests[-1]
        body = json.loads(r.content) if r.content else None
        return r.method, r.url.path, r.url.query.decode(), body


# --- one method per route ----------------------------------------------------------------
ROUTES: list[tuple[Callable[[ManagerClient], Any], str, str, str, Any]] = [
    (lambda c: c.healthz(), "GET", "/healthz", "", None),
    (lambda c: c.status(), "GET", "/api/v1/status", "", None),
    (lambda c: c.nodes(), "GET", "/api/v1/nodes", "", None),
    (lambda c: c.node("node-1"), "GET", "/api/v1/nodes/node-1", "", None),
    (lambda c: c.cordon("node-1"), "POST", "/api/v1/nodes/node-1/cordon", "", None),
    (lambda c: c.uncordon("node-1"), "POST", "/api/v1/nodes/node-1/uncordon", "", None),
    (lambda c: c.drain("node-1"), "POST", "/api/v1/nodes/node-1/drain", "", None),
    (lambda c: c.disks(), "GET", "/api/v1/disks", "", None),
    (
        lambda c: c.add_disk("node-2", "disk-1", "/mnt/a", 1 << 30, ["ssd"]),
        "POST",
        "/api/v1/nodes/node-2/disks",
        "",
        {"name": "disk-1", "path": "/mnt/a", "capacity_bytes": 1 << 30, "tags": ["ssd"]},
    ),
    (lambda c: c.volumes(), "GET", "/api/v1/volumes", "", None),
    (lambda c: c.volume("data"), "GET", "/api/v1/volumes/data", "", None),
    (
        lambda c: c.create_volume("data", 4096),
        "POST",
        "/api/v1/volumes",
        "",
        {"name": "data", "size_bytes": 4096},
    ),
    (
        lambda c: c.create_volume(
            "copy",
            8192,
            replicas=2,
            zone_spread=False,
            node_tags=["a"],
            disk_tags=["ssd"],
            reclaim_policy="Retain",
            stale_replica_timeout=5.0,
            source={"volume": "data", "snapshot": "s1"},
        ),
        "POST",
        "/api/v1/volumes",
        "",
        {
            "name": "copy",
            "size_bytes": 8192,
            "replicas": 2,
            "zone_spread": False,
            "node_tags": ["a"],
            "disk_tags": ["ssd"],
            "reclaim_policy": "Retain",
            "stale_replica_timeout": 5.0,
            "source": {"volume": "data", "snapshot": "s1"},
        },
    ),
    (lambda c: c.delete_volume("data"), "DELETE", "/api/v1/volumes/data", "", None),
    (
        lambda c: c.delete_volume("data", purge=True),
        "DELETE",
        "/api/v1/volumes/data",
        "purge=true",
        None,
    ),
    (
        lambda c: c.attach("data", "node-1"),
        "POST",
        "/api/v1/volumes/data/attach",
        "",
        {"node": "node-1"},
    ),
    (
        lambda c: c.attach("data", "node-1", force=True),
        "POST",
        "/api/v1/volumes/data/attach",
        "",
        {"node": "node-1", "force": True},
    ),
    (lambda c: c.detach("data"), "POST", "/api/v1/volumes/data/detach", "", None),
    (
        lambda c: c.expand("data", 1 << 31),
        "POST",
        "/api/v1/volumes/data/expand",
        "",
        {"size_bytes": 1 << 31},
    ),
    (lambda c: c.replicas(), "GET", "/api/v1/replicas", "", None),
    (lambda c: c.replicas("data"), "GET", "/api/v1/volumes/data/replicas", "", None),
    (lambda c: c.snapshots("data"), "GET", "/api/v1/volumes/data/snapshots", "", None),
    (
        lambda c: c.create_snapshot("data", "s1", {"app": "db"}),
        "POST",
        "/api/v1/volumes/data/snapshots",
        "",
        {"name": "s1", "labels": {"app": "db"}},
    ),
    (
        lambda c: c.delete_snapshot("data", "s1"),
        "DELETE",
        "/api/v1/volumes/data/snapshots/s1",
        "",
        None,
    ),
    (
        lambda c: c.revert("data", "s1"),
        "POST",
        "/api/v1/volumes/data/snapshots/s1/revert",
        "",
        None,
    ),
    (lambda c: c.operations(), "GET", "/api/v1/operations", "", None),
    (lambda c: c.operations("data"), "GET", "/api/v1/operations", "volume=data", None),
    (lambda c: c.operation("op-1"), "GET", "/api/v1/operations/op-1", "", None),
    (lambda c: c.attachments(), "GET", "/api/v1/attachments", "", None),
]


@pytest.mark.parametrize(("call", "method", "path", "query", "body"), ROUTES)
def test_each_route(
    call: Callable[[ManagerClient], Any], method: str, path: str, query: str, body: Any
) -> None:
    rec = Recorder(answer={"ok": True})
    with client(rec) as c:
        assert call(c) == {"ok": True}
    assert rec.last == (method, path, query, body)
    assert rec.requests[-1].url.host == "manager"


def test_names_cannot_reach_other_routes() -> None:
    rec = Recorder()
    with client(rec) as c:
        c.volume("a/../../nodes")
    assert rec.requests[-1].url.raw_path == b"/api/v1/volumes/a%2F..%2F..%2Fnodes"


def test_disks_of_one_node() -> None:
    disks = [{"node": "node-1", "name": "disk-0"}, {"node": "node-2", "name": "disk-0"}]
    with client(Recorder(disks)) as c:
        assert c.disks("node-2") == [disks[1]]
        assert c.disks() == disks


def test_url_forms() -> None:
    rec = Recorder()
    c = client(rec, url="127.0.0.1:9600")
    c.healthz()
    assert str(rec.requests[-1].url) == "http://127.0.0.1:9600/healthz"
    c = client(rec, url="unix:/run/cargohold/api.sock")
    c.healthz()
    assert str(rec.requests[-1].url) == "http://cargohold/healthz"
    with pytest.raises(InvalidArgument):
        ManagerClient("ftp://x")
    with pytest.raises(InvalidArgument):
        ManagerClient("unix:")


# --- unix sockets and connection failures ------------------------------------------------
class _Answer(http.server.BaseHTTPRequestHandler):
    def do_PUT(self) -> None:  # the agent's registration (test_transport.py)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def do_GET(self) -> None:
        body = json.dumps({"ok": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "api.sock")
    server = socketserver.UnixStreamServer(path, _Answer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def test_unix_socket(unix_server: str) -> None:
    for url in (f"unix:{unix_server}", f"unix://{unix_server}"):
        with ManagerClient(url) as c:
            assert c.healthz() == {"ok": True, "path": "/healthz"}


def test_no_manager_on_unix_socket(tmp_path: Path) -> None:
    url = f"unix:{tmp_path}/nothing.sock"
    with (
        pytest.raises(ManagerUnavailable, match=re.escape(f"no manager at {url}: ")),
        ManagerClient(url) as c,
    ):
        c.healthz()


def test_no_manager_on_tcp() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}"
    with (
        pytest.raises(ManagerUnavailable, match=re.escape(f"no manager at {url}: ")),
        ManagerClient(url) as c,
    ):
        c.nodes()


# --- error answers -----------------------------------------------------------------------
def _err(etype: str, message: str) -> dict[str, Any]:
    return {"error": {"type": etype, "message": message}}


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (404, _err("NotFound", "volume x not found"), NotFound, "volume x not found"),
        (409, _err("AlreadyExists", "volume x already exists"), AlreadyExists, "already exists"),
        (409, _err("WrongState", "volume x is attached"), WrongState, "is attached"),
        (409, _err("Busy", "busy now"), Busy, "busy now"),
        # a type the table does not know: WrongState ("Conflict" is the manager's Busy, see
        # tests/unit/control/test_transport.py)
        (409, _err("Teapot", "something else"), WrongState, "something else"),
        (400, _err("InvalidArgument", "volumes only grow"), InvalidArgument, "only grow"),
        (507, _err("Unschedulable", "need 3 zones, have 2"), Unschedulable, "need 3 zones"),
        (503, _err("ManagerUnavailable", "state store down"), ManagerUnavailable, "store down"),
        (500, {"detail": "boom"}, CargoholdError, "HTTP 500"),
        (404, {"detail": "Not Found"}, NotFound, "Not Found"),
    ],
)
def test_error_mapping(status: int, body: Any, cls: type[Exception], message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    with pytest.raises(cls, match=message) as info, client(handler) as c:
        c.volume("x")
    assert type(info.value) is cls
    assert info.value.detail["http_status"] == status  # type: ignore[attr-defined]


def test_422_lists_the_bad_fields() -> None:
    detail = [
        {"loc": ["body", "size_bytes"], "msg": "Input should be greater than 0", "type": "x"},
        {"loc": ["body", "name"], "msg": "Field required", "type": "missing"},
    ]

    def plain(request: httpx.Request) -> httpx.Response:  # FastAPI's own answer
        return httpx.Response(422, json={"detail": detail})

    with pytest.raises(InvalidArgument) as info, client(plain) as c:
        c.create_volume("x", 0)
    assert str(info.value) == "size_bytes: Input should be greater than 0; name: Field required"
    assert info.value.detail["fields"] == detail

    def manager(request: httpx.Request) -> httpx.Response:  # the manager's: both
        body = {**_err("InvalidArgument", "size_bytes: must be > 0"), "detail": detail}
        return httpx.Response(422, json=body)

    with pytest.raises(InvalidArgument, match=r"^size_bytes: must be > 0$"), client(manager) as c:
        c.create_volume("x", 0)


def test_error_without_json() -> None:
    req = httpx.Request("GET", "http://m/api/v1/nodes")
    e = error_from_response(httpx.Response(502, text="bad gateway", request=req), "http://m")
    assert type(e) is CargoholdError
    assert "GET /api/v1/nodes: HTTP 502" in str(e) and "bad gateway" in str(e)


def test_answer_without_json() -> None:
    with (
        pytest.raises(CargoholdError, match="sent no JSON"),
        client(lambda r: httpx.Response(200, text="<html>")) as c,
    ):
        c.nodes()


# --- discovery -----------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("CARGOHOLD_API", raising=False)
    monkeypatch.delenv("CARGOHOLD_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def _cluster(d: Path, **info: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "cluster.json").write_text(json.dumps(info))
    return d


def test_discover_api_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _cluster(clean_env / "c", api="http://from-file:1")
    assert ManagerClient.discover("http://given:2", str(d)).url == "http://given:2"
    monkeypatch.setenv("CARGOHOLD_API", "http://from-env:3")
    assert ManagerClient.discover().url == "http://from-env:3"
    assert ManagerClient.discover(None, str(d)).url == "http://from-file:1"  # explicit dir


def test_discover_from_cluster_json(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = clean_env / "c" / "api.sock"
    d = _cluster(clean_env / "c", api=f"unix:{sock}", api_tcp="http://127.0.0.1:39011")
    sock.touch()
    assert ManagerClient.discover(None, str(d)).url == f"unix:{sock}"
    monkeypatch.setenv("CARGOHOLD_DIR", str(d))
    assert ManagerClient.discover().url == f"unix:{sock}"
    sock.unlink()  # no socket (e.g. another mount namespace): the TCP address
    assert local_api(d) == "http://127.0.0.1:39011"


def test_discover_default_dir(clean_env: Path) -> None:
    _cluster(clean_env / "home" / ".cargohold", api="http://home:1")
    assert ManagerClient.discover().url == "http://home:1"


def test_discover_without_cluster(clean_env: Path) -> None:
    d = clean_env / "empty"
    with pytest.raises(ManagerUnavailable) as info:
        ManagerClient.discover(None, str(d))
    assert str(info.value) == (
        f"no local cluster in {d} (start one with `cargohold up`) and no --api given"
    )
    assert info.value.exit_code == 3


def test_discover_bad_cluster_file(clean_env: Path) -> None:
    d = clean_env / "bad"
    d.mkdir()
    (d / "cluster.json").write_text("{not json")
    with pytest.raises(ManagerUnavailable, match="cannot read"):
        ManagerClient.discover(None, str(d))
    _cluster(d, backend="sqlite")
    with pytest.raises(ManagerUnavailable, match="names no manager API"):
        ManagerClient.discover(None, str(d))


# --- waits ---------------------------------------------------------------------------------
def _ops(*states: tuple[str, float], error: str = "") -> Handler:
    seq = iter(states)
    last: list[tuple[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/operations/op-1"
        state = next(seq, None)
        if state is not None:
            last[:] = [state]
        s, p = last[0]
        op = {"id": "op-1", "kind": "snapshot-create", "volume": "data", "state": s}
        return httpx.Response(200, json={**op, "progress": p, "error": error})

    return handler


def test_wait_operation() -> None:
    seen: list[float] = []
    h = _ops(("pending", 0.0), ("running", 0.5), ("succeeded", 1.0))
    with client(h) as c:
        op = c.wait_operation("op-1", 10, lambda o: seen.append(o["progress"]))
    assert op["state"] == "succeeded"
    assert seen == [0.0, 0.5, 1.0]


def test_wait_operation_failed() -> None:
    h = _ops(("running", 0.1), ("failed", 0.1), error="no engine")
    with pytest.raises(OperationFailed, match="snapshot-create of data\\) failed: no engine"):
        client(h).wait_operation("op-1", 10)


def test_wait_operation_deadline() -> None:
    c = client(_ops(("running", 0.3)))
    with pytest.raises(WaitTimeout, match=r"operation op-1 after 5s .*state running") as info:
        c.wait_operation("op-1", 5)
    assert info.value.exit_code == 7
    assert c._clock() >= 105  # the fake clock: gave up at the deadline, not before


def test_wait_volume_and_unavailable_manager() -> None:
    answers: list[Any] = [
        {"name": "data", "state": "attaching"},
        httpx.ConnectError("refused"),  # the manager restarts
        {"name": "data", "state": "attached", "endpoint": "nbd://h:1/data"},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return httpx.Response(200, json=a)

    with client(handler) as c:
        v = c.wait_volume("data", lambda v: v["state"] == "attached", 10)
    assert v["endpoint"] == "nbd://h:1/data"


def test_wait_volume_deadline_and_not_found() -> None:
    c = client(lambda r: httpx.Response(200, json={"state": "attaching", "error": "no node"}))
    with pytest.raises(WaitTimeout, match=r"volume data after 2s .*attaching, error: no node"):
        c.wait_volume("data", lambda v: False, 2)
    gone = client(lambda r: httpx.Response(404, json=_err("NotFound", "volume data not found")))
    with pytest.raises(NotFound):
        gone.wait_volume("data", lambda v: True, 2)


def test_wait_gone() -> None:
    answers = [200, 200, 404]

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        if status == 404:
            return httpx.Response(404, json=_err("NotFound", "no volume data"))
        return httpx.Response(200, json={"name": "data", "state": "deleting"})

    with client(handler) as c:
        assert c.wait_gone("data", 10) is None
    assert not answers
    stuck = client(lambda r: httpx.Response(200, json={"name": "data", "state": "deleting"}))
    with pytest.raises(WaitTimeout, match="volume data still exists after 3s"):
        stuck.wait_gone("data", 3)


def test_find_operation() -> None:
    ops = [
        {"id": "op-1", "kind": "snapshot-create", "volume": "copy", "created_at": 3.0},
        {"id": "op-2", "kind": "clone", "volume": "copy", "created_at": 1.0},
        {"id": "op-3", "kind": "clone", "volume": "copy", "created_at": 2.0},
    ]
    rec = Recorder(ops)
    with client(rec) as c:
        assert c.find_operation("copy", "clone")["id"] == "op-3"  # type: ignore[index]
        assert c.find_operation("copy", "expand") is None
    assert rec.last[2] == "volume=copy"
