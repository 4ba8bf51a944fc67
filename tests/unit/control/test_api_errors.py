"""Malformed requests to the manager's API (in process, httpx's ASGI transport): every one
gets a 4xx in the documented error shape (``{"error": {"type", "message"}}``, plus
``detail`` for 422), never a 500; and a broken state store answers 503 with /healthz
failing until it is repaired."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.control.api import build
from cargohold.control.model import DiskReport, Registration, keys
from cargohold.control.repository import Repository
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import (
    EtcdStateStore,
    MemoryStateStore,
    SQLiteStateStore,
    StateStore,
)
from tests.etcd_proc import EtcdProcess, etcd_fixture

GiB = 1 << 30
V = "/api/v1/volumes"

etcd = etcd_fixture()


async def _service(store: StateStore | None = None, **settings: Any) -> Service:
    store = store or MemoryStateStore()
    service = Service(Repository(store), ManagerSettings(**settings), "memory", "t")
    for i in (1, 2, 3):
        await service.register(
            f"node-{i}",
            Registration(
                address="127.0.0.1",
                replica_port=9500 + i,
                disks=[DiskReport(name="disk-0", path=f"/d{i}", capacity_bytes=100 * GiB)],
            ),
        )
    return service


@pytest.fixture(params=["memory", "sqlite", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    """Each state store backend; the etcd one a real etcd (tests/etcd_proc.py)."""
    s: StateStore
    if request.param == "memory":
        s = MemoryStateStore()
    elif request.param == "sqlite":
        s = SQLiteStateStore(str(tmp_path / "state.db"))
    else:
        proc: EtcdProcess = request.getfixturevalue("etcd")
        s = EtcdStateStore([proc.url], namespace=f"/test-{uuid.uuid4().hex[:12]}")
    yield s
    await s.close()


@pytest.fixture
async def svc():  # type: ignore[no-untyped-def]
    return await _service(max_request_bytes=1 << 20)


@pytest.fixture
async def on_store(store: StateStore):  # type: ignore[no-untyped-def]
    """A service and a client over each backend."""
    svc = await _service(store)
    transport = httpx.ASGITransport(app=build(svc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield svc, c


@pytest.fixture
async def api(svc: Service):  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=build(svc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def shaped(r: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    assert set(body) <= {"error", "detail"}, body
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body
    if kind is not None:
        assert body["error"]["type"] == kind, body
    if status == 422:
        assert isinstance(body["detail"], list) and body["detail"], body
    return body


OK = {"name": "data", "size_bytes": GiB}


@pytest.mark.parametrize(
    ("content", "ctype", "status"),
    [
        (json.dumps(OK), "text/plain", 415),
        (json.dumps(OK), "application/x-www-form-urlencoded", 415),
        (json.dumps(OK), "", 415),
        (b"\xff\xfe\x00garbage", "application/octet-stream", 415),
        ('{"name": "data", "size_bytes": NaN}', "application/json", 422),
        ('{"name": "data", "size_bytes": Infinity}', "application/json", 422),
        ('{"name": "data", "size_bytes": 1e999}', "application/json", 422),
        (
            '{"name": "data", "size_bytes": 4096, "stale_replica_timeout": -Infinity}',
            "application/json",
            422,
        ),
        ("{nope", "application/json", 422),
        (b"\xff\xfe\x00garbage", "application/json", 422),
        ("[" * 100_000, "application/json", 422),
        ('{"name": "data", "size_bytes": "4096"}', "application/json", 422),
        ('{"name": "data", "size_bytes": 4096.0}', "application/json", 422),
        ('{"name": "data", "size_bytes": true}', "application/json", 422),
        ('{"name": "data", "size_bytes": 4096, "replicas": "2"}', "application/json", 422),
        ('{"name": "data", "size_bytes": 4096, "zone_spread": "yes"}', "application/json", 422),
        (
            '{"name": "data", "size_bytes": 4096, "stale_replica_timeout": "3"}',
            "application/json",
            422,
        ),
        ('{"name": "data", "size_bytes": 99999999999999999999999999}', "application/json", 422),
        ('{"name": ' + '"' + "a" * 5000 + '", "size_bytes": 4096}', "application/json", 422),
    ],
)
async def test_malformed_bodies_get_4xx_in_the_error_shape(
    api: httpx.AsyncClient, content: str | bytes, ctype: str, status: int
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = await api.post(V, content=content, headers=headers)
    body = shaped(r, status)
    if status == 422:
        for d in body["detail"]:
            assert len(json.dumps(d["input"])) <= 250, d  # a safe, short echo
    assert (await api.get(V)).json() == []  # nothing was created


async def test_strict_integers_in_every_request(api: httpx.AsyncClient) -> None:
    assert (await api.post(V, json=OK)).status_code == 201
    shaped(await api.post(V + "/data/expand", json={"size_bytes": "8192"}), 422)
    shaped(await api.post(V + "/data/expand", json={"size_bytes": 2.0 * GiB}), 422)
    disk = {"name": "d2", "path": "/x", "capacity_bytes": "4096"}
    shaped(await api.post("/api/v1/nodes/node-1/disks", json=disk), 422)
    reg = {"address": "127.0.0.1", "replica_port": "9600"}
    shaped(await api.put("/api/v1/nodes/node-7", json=reg), 422)
    hb = {"replicas": [{"id": "r", "volume": "v", "generation": 1.0}]}
    shaped(await api.post("/api/v1/nodes/node-1/heartbeat", json=hb), 422)
    shaped(await api.post(V + "/data/attach", json={"node": "node-1", "force": "true"}), 422)


async def test_unknown_routes_wrong_methods_and_bad_names(api: httpx.AsyncClient) -> None:
    shaped(await api.get("/nope"), 404, "NotFound")
    shaped(await api.get("/api/v1/volumes/data/nope"), 404, "NotFound")
    r = await api.put(V)
    shaped(r, 405, "MethodNotAllowed")
    assert r.headers["allow"] == "GET, POST"
    r = await api.put(V + "/data")  # GET, DELETE, PATCH: three routes, Allow names all
    shaped(r, 405, "MethodNotAllowed")
    assert r.headers["allow"] == "DELETE, GET, PATCH"
    shaped(await api.get(V + "/Not_A_Name"), 422, "InvalidArgument")
    reg = {"address": "127.0.0.1"}
    shaped(await api.put("/api/v1/nodes/Bad_Node", json=reg), 422, "InvalidArgument")


async def test_a_body_above_the_bound_is_413(api: httpx.AsyncClient) -> None:
    big = json.dumps({**OK, "node_tags": ["x" * 1000] * 2000})
    r = await api.post(V, content=big, headers={"content-type": "application/json"})
    shaped(r, 413, "PayloadTooLarge")
    assert (await api.get(V)).json() == []


async def test_twenty_concurrent_creates_of_one_name(on_store) -> None:  # type: ignore[no-untyped-def]
    _, api = on_store
    rs = await asyncio.gather(*(api.post(V, json=OK) for _ in range(20)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201] + [409] * 19, [r.text for r in rs if r.status_code not in (201, 409)]
    for r in rs:
        if r.status_code == 409:
            shaped(r, 409, "AlreadyExists")
    assert len((await api.get(V + "/data")).json()["replicas"]) == 3


async def test_a_record_with_bad_json_is_503_and_health_fails_until_fixed(on_store) -> None:  # type: ignore[no-untyped-def]
    svc, api = on_store
    assert (await api.post(V, json=OK)).status_code == 201
    assert (await api.get("/healthz")).status_code == 200
    good = (await svc.repo.store.get(keys.volume("data"))).value  # type: ignore[union-attr]
    await svc.repo.store.put(keys.volume("data"), b'{"name": "data", "size_bytes": ')
    for path in (V + "/data", V, "/api/v1/status"):
        body = shaped(await api.get(path), 503, "StateStoreDamaged")
        assert "/volumes/data" in body["error"]["message"]
    body = shaped(await api.get("/healthz"), 503, "StateStoreDamaged")
    assert "/volumes/data" in body["error"]["message"]
    assert (await api.get("/livez")).status_code == 200  # liveness: no restart for this
    # a record that parses but is not a valid record: the same
    await svc.repo.store.put(keys.volume("data"), b'{"name": "data", "size_bytes": -1}')
    shaped(await api.get(V + "/data"), 503, "StateStoreDamaged")
    shaped(await api.get("/healthz"), 503, "StateStoreDamaged")
    await svc.repo.store.put(keys.volume("data"), good)  # repaired
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get(V + "/data")).json()["name"] == "data"


async def test_a_create_that_loses_the_race_after_its_check_is_409(
    on_store,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race of the 507: create A checks that the name is free, create B stores the
    volume and its replicas, then A places replicas: B's replicas hold every node."""
    svc, api = on_store
    plan = svc.repo.plan_replicas
    raced: list[int] = []

    async def plan_after_a_rival(*args: Any, **kw: Any) -> Any:
        if not raced:
            raced.append(0)
            raced[0] = (await api.post(V, json=OK)).status_code  # the rival wins
        return await plan(*args, **kw)

    monkeypatch.setattr(svc.repo, "plan_replicas", plan_after_a_rival)
    r = await api.post(V, json=OK)
    assert raced == [201]
    shaped(r, 409, "AlreadyExists")
