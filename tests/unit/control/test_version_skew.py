"""Version skew between the manager and its agents (control/version_skew.py): the pure rule,
and the manager refusing a skewed agent over HTTP (409, a message that says what to upgrade)
while keeping its node up."""

from __future__ import annotations

import httpx
import pytest

from cargohold.control.api import build
from cargohold.control.model import DiskReport, Heartbeat, Registration
from cargohold.control.repository import Repository
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import open_store
from cargohold.control.version_skew import (
    VERSION_OVERRIDE_ENV,
    check_agent,
    major_minor,
    running_version,
    skew_problem,
)
from cargohold.errors import VersionSkew


@pytest.mark.parametrize(
    ("manager", "agent"),
    [
        ("0.2.0", "0.2.0"),
        ("0.2.0", "0.2.7"),  # patch levels never matter
        ("0.2.0", "0.1.9"),  # one minor behind
        ("0.2.0", "0.3.0rc1"),  # one minor ahead, a pre-release
        ("1.4.2", "v1.5"),
        ("0.1.0", ""),  # an agent older than version reporting counts as 0.1
        ("0.2.0", ""),
    ],
)
def test_accepted(manager: str, agent: str) -> None:
    assert skew_problem(manager, agent) == ""


@pytest.mark.parametrize(
    ("manager", "agent", "needles"),
    [
        ("0.3.0", "0.1.4", ["0.1.4 is older", "2 minor versions apart", "upgrade the agent"]),
        ("0.1.0", "0.3.0", ["0.3.0 is newer", "upgrade the manager first"]),
        ("1.0.0", "0.9.0", ["a different major version", "older"]),
        ("0.1.0", "1.1.0", ["a different major version", "newer"]),
        ("0.3.0", "", ["unreported", "older"]),
        ("0.2.0", "banana", ["not understood", "'banana'"]),
    ],
)
def test_refused(manager: str, agent: str, needles: list[str]) -> None:
    problem = skew_problem(manager, agent)
    for needle in needles:
        assert needle in problem
    if agent != "banana":
        assert "at most 1 minor version behind or ahead" in problem


def test_check_agent_raises_version_skew_naming_the_node() -> None:
    with pytest.raises(VersionSkew, match=r"node node-1: agent version 0\.5\.0") as e:
        check_agent("node-1", "0.5.0", manager="0.2.0")
    assert e.value.detail == {"node": "node-1", "agent_version": "0.5.0"}
    check_agent("node-1", "0.2.1", manager="0.2.0")  # no error


def test_major_minor_parses_and_refuses() -> None:
    assert major_minor("0.12.3") == (0, 12)
    assert major_minor("v2.0") == (2, 0)
    assert major_minor("1.2.3.dev4") == (1, 2)
    for bad in ("", "1", "x.y", "1.2.3 4"):
        with pytest.raises(ValueError):
            major_minor(bad)


def test_the_override_is_what_a_process_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VERSION_OVERRIDE_ENV, raising=False)
    from cargohold import __version__

    assert running_version() == __version__
    monkeypatch.setenv(VERSION_OVERRIDE_ENV, "0.9.1")
    assert running_version() == "0.9.1"


@pytest.fixture
async def service() -> Service:
    return Service(Repository(open_store("memory:")), ManagerSettings(), "memory", "t")


async def test_the_api_refuses_a_skewed_agent_and_keeps_its_node_up(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VERSION_OVERRIDE_ENV, "0.4.0")
    reg = Registration(
        address="127.0.0.1",
        replica_port=9501,
        disks=[DiskReport(name="disk-0", path="/d1", capacity_bytes=1 << 30)],
        agent_version="0.4.2",
    )
    transport = httpx.ASGITransport(app=build(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        r = await api.put("/api/v1/nodes/node-1", json=reg.model_dump())
        assert r.status_code == 200, r.text
        assert r.json()["agent_version"] == "0.4.2" and r.json()["error"] == ""
        hb = Heartbeat(replica_port=9501, agent_version="0.4.2").model_dump()
        r = await api.post("/api/v1/nodes/node-1/heartbeat", json=hb)
        assert r.status_code == 200, r.text
        # the same node's agent, downgraded two minors: refused with a clear 409
        old = {**hb, "agent_version": "0.2.0"}
        r = await api.post("/api/v1/nodes/node-1/heartbeat", json=old)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["type"] == "VersionSkew"
        assert "agent version 0.2.0 is older than manager version 0.4.0" in err["message"]
        assert "upgrade the agent" in err["message"]
        node = (await api.get("/api/v1/nodes/node-1")).json()
        assert node["state"] == "up" and node["agent_version"] == "0.2.0"
        assert "0.2.0 is older" in node["error"]
        events = (await api.get("/api/v1/events")).json()
        assert sum("0.2.0 is older" in e["message"] for e in events) == 1
        r = await api.post("/api/v1/nodes/node-1/heartbeat", json=old)  # said once only
        assert r.status_code == 409
        events = (await api.get("/api/v1/events")).json()
        assert sum("0.2.0 is older" in e["message"] for e in events) == 1
        # registration is refused the same way; an unknown node gets no record
        r = await api.put(
            "/api/v1/nodes/node-2", json={**reg.model_dump(), "agent_version": "1.0.0"}
        )
        assert r.status_code == 409 and "different major version" in r.text
        assert (await api.get("/api/v1/nodes/node-2")).status_code == 404
        # upgraded again: accepted, the refusal is gone from the record
        r = await api.post("/api/v1/nodes/node-1/heartbeat", json=hb)
        assert r.status_code == 200, r.text
        node = (await api.get("/api/v1/nodes/node-1")).json()
        assert node["error"] == "" and node["agent_version"] == "0.4.2"
        health = (await api.get("/livez")).json()
        assert health["version"] == "0.4.0"
