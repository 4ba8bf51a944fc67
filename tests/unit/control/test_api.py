"""The manager's REST API over HTTP (in process, httpx's ASGI transport): status codes,
error bodies, validation, and the checked-in OpenAPI schema."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cargohold.control.api import build
from cargohold.control.model import DiskReport, Registration
from cargohold.control.openapi import render
from cargohold.control.repository import Repository
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import open_store

ROOT = Path(__file__).resolve().parents[3]
GiB = 1 << 30


@pytest.fixture
async def api():  # type: ignore[no-untyped-def]
    service = Service(Repository(open_store("memory:")), ManagerSettings(), "memory", "t")
    for i in (1, 2, 3):
        await service.register(
            f"node-{i}",
            Registration(
                address="127.0.0.1",
                replica_port=9500 + i,
                disks=[DiskReport(name="disk-0", path=f"/d{i}", capacity_bytes=10 * GiB)],
            ),
        )
    transport = httpx.ASGITransport(app=build(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def test_the_checked_in_openapi_schema_is_current() -> None:
    checked_in = (ROOT / "docs/api/openapi.json").read_text()
    assert checked_in == render(), (
        "docs/api/openapi.json is stale: run `.venv/bin/python -m cargohold.control.openapi "
        "docs/api/openapi.json`"
    )


async def test_volume_life_over_http(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/volumes", json={"name": "data", "size_bytes": GiB})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["replicas_wanted"] == 3 and body["state"] == "detached"
    assert len(body["replicas"]) == 3
    r = await api.post("/api/v1/volumes", json={"name": "data", "size_bytes": GiB})
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "AlreadyExists"
    r = await api.get("/api/v1/volumes/nope")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "volume nope not found"
    r = await api.post("/api/v1/volumes/data/attach", json={"node": "node-2"})
    assert r.status_code == 202 and r.json()["state"] == "attaching"
    r = await api.post("/api/v1/volumes/data/attach", json={"node": "node-3"})
    assert r.status_code == 409
    r = await api.delete("/api/v1/volumes/data")
    assert r.status_code == 409 and "detach it first" in r.json()["error"]["message"]
    r = await api.get("/api/v1/attachments")
    assert r.json()[0]["node"] == "node-2"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "Bad_Name", "size_bytes": GiB}, "name"),
        ({"name": "ok", "size_bytes": 1000}, "multiple of 4096"),
        ({"name": "ok", "size_bytes": -4096}, "size_bytes"),
        ({"name": "ok", "size_bytes": GiB, "replicas": 0}, "replicas"),
        ({"name": "ok", "size_bytes": GiB, "reclaim_policy": "Recycle"}, "reclaim_policy"),
        ({"name": "ok", "size_bytes": GiB, "colour": "red"}, "colour"),
        ({"size_bytes": GiB}, "name"),
    ],
)
async def test_bad_requests_get_422_naming_the_field(
    api: httpx.AsyncClient,
    body: dict,
    needle: str,  # type: ignore[type-arg]
) -> None:
    r = await api.post("/api/v1/volumes", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


async def test_not_json_is_422(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/api/v1/volumes", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


async def test_unschedulable_is_507_with_the_reason(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes/node-3/cordon")
    r = await api.post("/api/v1/volumes", json={"name": "data", "size_bytes": GiB})
    assert r.status_code == 507
    assert "node-3 is cordoned" in r.json()["error"]["message"]
    r = await api.post(
        "/api/v1/volumes", json={"name": "big", "size_bytes": 64 * GiB, "replicas": 1}
    )
    assert r.status_code == 507


async def test_nodes_status_and_snapshots(api: httpx.AsyncClient) -> None:
    nodes = (await api.get("/api/v1/nodes")).json()
    assert [(n["name"], n["state"]) for n in nodes] == [
        ("node-1", "up"),
        ("node-2", "up"),
        ("node-3", "up"),
    ]
    st = (await api.get("/api/v1/status")).json()
    assert st["nodes"]["up"] == 3 and st["capacity_bytes"] == 30 * GiB
    await api.post("/api/v1/volumes", json={"name": "data", "size_bytes": GiB})
    r = await api.post("/api/v1/volumes/data/snapshots", json={"name": "s1"})
    assert r.status_code == 202 and r.json()["kind"] == "snapshot-create"
    op = r.json()["id"]
    assert (await api.get(f"/api/v1/operations/{op}")).json()["state"] == "pending"
    r = await api.post("/api/v1/volumes/data/snapshots", json={"name": "s1"})
    assert r.status_code == 409
    r = await api.post("/api/v1/volumes/data/snapshots/s1/revert")
    assert r.status_code == 409  # still pending
    r = await api.post("/api/v1/volumes/data/expand", json={"size_bytes": GiB // 2})
    assert r.status_code == 400 and "only grow" in r.json()["error"]["message"]
