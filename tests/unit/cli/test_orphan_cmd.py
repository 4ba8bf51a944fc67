"""``cargohold replica orphans [delete]`` and ``cargohold events`` against a stand-in manager:
the table shows what an operator needs, ``-o json`` is the API's JSON unchanged, delete
goes to the right route, and a missing orphan is exit code 4."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cargohold.cli.main import app
from cargohold.control.client import ManagerClient

ORPHAN = {
    "id": "data-r1a2b3c",
    "volume": "data",
    "node": "node-2",
    "disk_path": "/var/lib/cargohold/disk-0",
    "size_bytes": 1 << 30,
    "generation": 5120,
    "seen": 5120,
    "epoch": 3,
    "history": [[1, 0], [3, 4096]],
    "snapshots": ["daily-1"],
    "cluster_id": "c-" + "5" * 32,
    "first_seen": 1.0,
    "last_seen": 2.0,
}
EVENT = {
    "id": "00000000001000000000-000000ab12",
    "at": 1.0,
    "kind": "agent-refused",
    "message": "cluster id mismatch: disk /d belongs to cluster c-1, the manager to c-2",
    "node": "node-1",
    "volume": "",
    "replica": "",
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    orphans = [dict(ORPHAN)]

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(
            (
                request.method,
                request.url.path + ("?" + request.url.query.decode() if request.url.query else ""),
            )
        )
        path = request.url.path
        if path == "/api/v1/orphans":
            return httpx.Response(200, json=orphans)
        if path == "/api/v1/events":
            return httpx.Response(200, json=[EVENT])
        if request.method == "DELETE" and path.startswith("/api/v1/orphans/"):
            node, rid = path.split("/")[-2:]
            hit = [o for o in orphans if (o["node"], o["id"]) == (node, rid)]
            if not hit:
                body = {"error": {"type": "NotFound", "message": f"no orphan replica {rid}"}}
                return httpx.Response(404, json=body)
            orphans.remove(hit[0])
            return httpx.Response(200, json=hit[0])
        return httpx.Response(404, json={"detail": "Not Found"})

    def discover(api: str | None = None, dir: str | None = None, **kw: Any) -> ManagerClient:
        return ManagerClient("http://fake:9600", transport=httpx.MockTransport(handle))

    monkeypatch.setattr(ManagerClient, "discover", staticmethod(discover))
    return seen


def run(*args: str) -> Any:
    env = {"COLUMNS": "200", "CARGOHOLD_API": None, "CARGOHOLD_DIR": None}
    return CliRunner().invoke(app, list(args), env=env)  # type: ignore[arg-type]


def test_orphans_table_and_json(calls: list[tuple[str, str]]) -> None:
    r = run("replica", "orphans")
    assert r.exit_code == 0, r.output
    for text in ("NODE", "REPLICA", "node-2", "data-r1a2b3c", "1 GiB", "5120", "c-5555"):
        assert text in r.output, r.output
    r = run("replica", "orphans", "-o", "json", "--node", "node-2")
    assert json.loads(r.output) == [ORPHAN]
    assert calls[-1] == ("GET", "/api/v1/orphans?node=node-2")


def test_orphan_delete(calls: list[tuple[str, str]]) -> None:
    r = run("replica", "orphans", "delete", "node-2", "data-r1a2b3c")
    assert r.exit_code == 0 and "deleted" in r.output and "trash" in r.output, r.output
    assert calls[-1] == ("DELETE", "/api/v1/orphans/node-2/data-r1a2b3c")
    r = run("replica", "orphans", "delete", "node-2", "data-r1a2b3c")
    assert r.exit_code == 4 and "no orphan replica" in r.output
    assert "no orphan replicas" in run("replica", "orphans").output


def test_events(calls: list[tuple[str, str]]) -> None:
    r = run("events")
    assert r.exit_code == 0 and "agent-refused" in r.output and "mismatch" in r.output
    assert json.loads(run("events", "-o", "json").output) == [EVENT]


def test_events_of_a_volume_and_follow(
    calls: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cargohold.cli import orphan_cmd

    r = run("events", "data", "--limit", "5")
    assert r.exit_code == 0, r.output
    assert ("GET", "/api/v1/events?volume=data&limit=5") in calls
    # --follow: the events so far, then each poll asks for what came after the last one
    # shown (a poll that repeats one already shown prints it once); Ctrl-C ends it cleanly
    polls = iter([None, KeyboardInterrupt()])

    def sleep(_s: float) -> None:
        nxt = next(polls)
        if nxt is not None:
            raise nxt

    monkeypatch.setattr(orphan_cmd.time, "sleep", sleep)
    calls.clear()
    r = run("events", "data", "--follow")
    assert r.exit_code == 0, r.output
    assert r.output.count("agent-refused") == 1, r.output
    assert r.output.startswith("00:00:01 agent-refused node-1: cluster id mismatch")
    assert calls[0] == ("GET", "/api/v1/events?volume=data")
    assert calls[1][1].startswith("/api/v1/events?volume=data&since=0.999")
