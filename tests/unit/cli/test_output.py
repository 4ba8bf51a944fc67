"""The manager commands (node, disk, volume, snapshot) over a fake manager: tables for people,
-o json exactly the API's JSON, -o yaml the same data, waits, and errors with their exit
codes (cargohold/cli/output.py)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from cargohold.cli import output
from cargohold.cli.main import app
from cargohold.control.client import ManagerClient

JSON = dict[str, Any]


def _replica(rid: str, node: str, state: str = "stopped", **kw: Any) -> JSON:
    r = {"id": rid, "volume": rid.rsplit("-r", 1)[0], "node": node, "disk": "disk-0"}
    return {**r, "mode": None, "generation": 7, "rebuild_progress": None, "state": state, **kw}


def _volume(name: str, size: int = 1 << 30, **kw: Any) -> JSON:
    v = {
        "name": name,
        "size_bytes": size,
        "replicas_wanted": 3,
        "state": "detached",
        "robustness": "healthy",
        "endpoint": "",
        "attached_node": None,
        "epoch": 2,
        "generation": 7,
        "reclaim_policy": "Delete",
        "zone_spread": True,
        "node_tags": [],
        "disk_tags": [],
        "stale_replica_timeout": 30.0,
        "source": None,
        "created_at": 1795000000.0,
        "error": "",
        "replicas": [_replica(f"{name}-r00000{i}", f"node-{i}") for i in (1, 2, 3)],
        "last_scrub": None,
    }
    return {**v, **kw}


def _node(name: str, state: str = "up", **kw: Any) -> JSON:
    n = {
        "name": name,
        "zone": "a",
        "address": "127.0.0.1",
        "replica_port": 9500,
        "tags": ["ssd"],
        "cordoned": state == "cordoned",
        "draining": False,
        "heartbeat_at": 1795000000.0,
        "down_since": 1795000001.0 if state == "down" else None,
        "registered_at": 1794000000.0,
        "agent_pid": 1234,
        "state": state,
    }
    return {**n, **kw}


def _err(status: int, etype: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": etype, "message": message}})


class FakeManager:
    """Canned state, and just enough behaviour for the commands' waits."""

    def __init__(self) -> None:
        self.nodes = [_node("node-1", "down"), _node("node-2"), _node("node-3", "cordoned")]
        self.disks = [
            {
                "node": n,
                "name": "disk-0",
                "path": f"/d/{n}/disk-0",
                "capacity_bytes": 100 << 30,
                "tags": [],
                "schedulable": True,
            }
            for n in ("node-1", "node-2", "node-3")
        ]
        self.volumes: dict[str, JSON] = {
            "data": _volume("data"),
            "logs": _volume(
                "logs",
                robustness="degraded",
                replicas=[
                    _replica("logs-r000001", "node-1", "failed"),
                    _replica("logs-r000002", "node-2", "running", mode="RW"),
                    _replica(
                        "logs-r000003", "node-3", "rebuilding", mode="WO", rebuild_progress=0.4
                    ),
                ],
            ),
        }
        self.snapshots = {
            "data": [
                {
                    "volume": "data",
                    "name": "s1",
                    "state": "ready",
                    "labels": {"app": "db"},
                    "created_at": 1795000000.0,
                    "size_bytes": 4096,
                    "error": "",
                }
            ]
        }
        self.ops: dict[str, JSON] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.gets: dict[str, int] = {}  # volume -> GETs answered since its last change
        self.fail: httpx.Response | None = None  # answer every request with this
        self.op_outcome = ("succeeded", "")
        self.attach_works = True

    # --- behaviour -------------------------------------------------------------------------
    def _op(self, kind: str, volume: str, **args: Any) -> JSON:
        oid = f"op-{len(self.ops) + 1}"
        op = {
            "id": oid,
            "kind": kind,
            "volume": volume,
            "args": args,
            "state": "pending",
            "progress": 0.0,
            "error": "",
            "result": {},
            "created_at": 1795000100.0 + len(self.ops),
            "finished_at": None,
        }
        self.ops[oid] = op
        return copy.deepcopy(op)

    def _advance_op(self, op: JSON) -> None:
        if op["state"] == "pending":
            op.update(state="running", progress=0.5)
        elif op["state"] == "running":
            state, error = self.op_outcome
            op.update(state=state, progress=1.0, error=error, finished_at=1795000200.0)

    def _volume_get(self, name: str) -> httpx.Response:
        v = self.volumes.get(name)
        if v is None:
            return _err(404, "NotFound", f"volume {name} not found")
        n = self.gets[name] = self.gets.get(name, 0) + 1
        if n >= 2:  # the second GET after a change sees it carried out
            if v["state"] == "attaching" and self.attach_works:
                v.update(state="attached", endpoint=f"nbd://127.0.0.1:10809/{name}")
            elif v["state"] == "detaching":
                v.update(state="detached", endpoint="")
            elif v["state"] == "deleting":
                del self.volumes[name]
            elif v["state"] == "creating":
                v["state"] = "detached"
            for r in v["replicas"]:
                if r["state"] == "pending":
                    r["state"] = "stopped"
        return httpx.Response(200, json=v)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        m, path = request.method, request.url.path
        self.requests.append((m, str(request.url.copy_with(scheme="http", host="m")), body))
        if self.fail is not None:
            return self.fail
        parts = path.strip("/").split("/")[2:]  # after api/v1
        if path == "/api/v1/nodes":
            return httpx.Response(200, json=self.nodes)
        if parts[0] == "nodes" and len(parts) == 2:
            node = next((n for n in self.nodes if n["name"] == parts[1]), None)
            if node is None:
                return _err(404, "NotFound", f"node {parts[1]} not found")
            return httpx.Response(200, json=node)
        if parts[0] == "nodes" and parts[2] in ("cordon", "uncordon", "drain"):
            node = next(n for n in self.nodes if n["name"] == parts[1])
            node.update(cordoned=parts[2] != "uncordon", draining=parts[2] == "drain")
            node["state"] = "cordoned" if node["cordoned"] else "up"
            return httpx.Response(200, json=node)
        if parts[0] == "nodes" and parts[2] == "disks":
            disk = {"node": parts[1], **body, "schedulable": True}
            self.disks.append(disk)
            return httpx.Response(201, json=disk)
        if path == "/api/v1/disks":
            return httpx.Response(200, json=self.disks)
        if path == "/api/v1/replicas":
            return httpx.Response(
                200, json=[r for v in self.volumes.values() for r in v["replicas"]]
            )
        if path == "/api/v1/volumes" and m == "GET":
            return httpx.Response(200, json=list(self.volumes.values()))
        if path == "/api/v1/volumes" and m == "POST":
            name = body["name"]
            if name in self.volumes:
                return _err(409, "AlreadyExists", f"volume {name} already exists")
            if body.get("replicas", 3) > 3:
                return _err(507, "Unschedulable", "need 4 nodes with room, have 3")
            reps = [
                _replica(f"{name}-r00000{i}", f"node-{i}", "pending")
                for i in range(1, body.get("replicas", 3) + 1)
            ]
            v = _volume(
                name,
                body["size_bytes"],
                replicas_wanted=len(reps),
                replicas=reps,
                robustness="unknown",
                source=body.get("source"),
                state="creating" if body.get("source") else "detached",
            )
            self.volumes[name] = v
            self.gets[name] = 0
            if body.get("source"):
                self._op("clone", name, source_volume=body["source"]["volume"])
            return httpx.Response(201, json=v)
        if parts[0] == "volumes" and len(parts) == 2:
            if m == "GET":
                return self._volume_get(parts[1])
            v = self.volumes[parts[1]]
            if v["attached_node"]:
                return _err(409, "WrongState", f"volume {parts[1]} is attached; detach it first")
            self.gets[parts[1]] = 0
            v["state"] = (
                "released"
                if v["reclaim_policy"] == "Retain" and "purge" not in str(request.url)
                else "deleting"
            )
            return httpx.Response(202, json=v)
        if parts[0] == "volumes" and parts[2] == "attach":
            v = self.volumes[parts[1]]
            v.update(state="attaching", attached_node=body["node"])
            self.gets[parts[1]] = 0
            return httpx.Response(202, json=v)
        if parts[0] == "volumes" and parts[2] == "detach":
            v = self.volumes[parts[1]]
            v.update(state="detaching", attached_node=None)
            self.gets[parts[1]] = 0
            return httpx.Response(202, json=v)
        if parts[0] == "volumes" and parts[2] == "expand":
            return httpx.Response(202, json=self._op("expand", parts[1], **body))
        if parts[0] == "volumes" and parts[2] == "snapshots":
            if parts[1] not in self.volumes:
                return _err(404, "NotFound", f"volume {parts[1]} not found")
            if m == "GET":
                return httpx.Response(200, json=self.snapshots.get(parts[1], []))
            if len(parts) == 5 and parts[4] == "revert":
                if self.volumes[parts[1]]["attached_node"]:
                    return _err(409, "WrongState", f"volume {parts[1]} is attached: detach it")
                return httpx.Response(
                    202, json=self._op("snapshot-revert", parts[1], name=parts[3])
                )
            if m == "DELETE":
                return httpx.Response(
                    202, json=self._op("snapshot-delete", parts[1], name=parts[3])
                )
            return httpx.Response(202, json=self._op("snapshot-create", parts[1], **body))
        if path == "/api/v1/operations":
            vol = request.url.params.get("volume")
            return httpx.Response(200, json=[o for o in self.ops.values() if o["volume"] == vol])
        if parts[0] == "operations":
            op = self.ops[parts[1]]
            answer = copy.deepcopy(op)
            self._advance_op(op)
            return httpx.Response(200, json=answer)
        return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeManager:
    mgr = FakeManager()
    mgr.discovered: list[tuple[Any, Any]] = []  # type: ignore[misc]

    def discover(api: str | None = None, dir: str | None = None, **kw: Any) -> ManagerClient:
        mgr.discovered.append((api, dir))  # type: ignore[attr-defined]
        transport = httpx.MockTransport(mgr.handle)
        return ManagerClient("http://fake:9600", transport=transport, poll_interval=0.0)

    monkeypatch.setattr(ManagerClient, "discover", staticmethod(discover))
    return mgr


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke ``cargohold ARGS`` with no CARGOHOLD_* from the caller's environment."""
    full: dict[str, str | None] = {"COLUMNS": "200", "CARGOHOLD_API": None, "CARGOHOLD_DIR": None}
    result = CliRunner().invoke(app, list(args), env={**full, **(env or {})})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# --- tables, json and yaml -----------------------------------------------------------------
READS = [
    (("node", "list"), lambda f: f.nodes),
    (("node", "get", "node-2"), lambda f: f.nodes[1]),
    (("disk", "list"), lambda f: f.disks),
    (("disk", "list", "--node", "node-3"), lambda f: f.disks[2:]),
    (("volume", "list"), lambda f: list(f.volumes.values())),
    (("volume", "get", "logs"), lambda f: f.volumes["logs"]),
    (("snapshot", "list", "data"), lambda f: f.snapshots["data"]),
]


@pytest.mark.parametrize(("args", "expected"), READS)
def test_json_and_yaml_are_the_api_json(
    fake: FakeManager, args: tuple[str, ...], expected: Any
) -> None:
    want = copy.deepcopy(expected(fake))
    r = run(*args, "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == want
    assert r.stdout.startswith(("[\n  {", '{\n  "'))  # indent 2
    r = run(*args, "--output", "yaml")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.stdout) == want


def test_volume_tables(fake: FakeManager) -> None:
    r = run("volume", "list")
    assert r.exit_code == 0
    assert "data" in r.stdout and "logs" in r.stdout
    assert "1 GiB" in r.stdout and "degraded" in r.stdout and "1/3" in r.stdout
    r = run("volume", "get", "logs")
    assert r.exit_code == 0
    for text in ("logs-r000003", "rebuilding", "40%", "WO", "size_bytes", "1 GiB"):
        assert text in r.stdout
    assert "last_scrub" in r.stdout and "never" in r.stdout


def test_the_last_scrub_reads_as_words() -> None:
    from cargohold.cli.volume_cmd import scrub_text

    assert scrub_text(None) == "never"
    s = {"ended_at": 1.0, "checked_blocks": 10, "found": 0, "repaired": 0, "unrepaired": 0}
    assert "ago: 10 blocks checked, 0 bad;" in scrub_text(s)
    s.update(found=3, repaired=2, unrepaired=1)
    assert "3 bad, 2 repaired, 1 not repaired; replicas not compared" in scrub_text(s)
    s.update(compared_replicas=3, diverged_found=4, diverged_repaired=3, diverged_unrepaired=1)
    assert scrub_text(s).endswith(
        "; 3 replicas compared: 4 blocks differ, 3 repaired, 1 not repaired"
    )


def test_node_tables(fake: FakeManager) -> None:
    r = run("node", "list")
    assert r.exit_code == 0
    for text in ("node-1", "down", "node-3", "cordoned", "127.0.0.1:9500", "ssd"):
        assert text in r.stdout
    r = run("node", "get", "node-2")
    assert r.exit_code == 0
    assert "/d/node-2/disk-0" in r.stdout and "100 GiB" in r.stdout and "logs-r000002" in r.stdout


def test_snapshot_and_disk_tables(fake: FakeManager) -> None:
    r = run("snapshot", "list", "data")
    assert r.exit_code == 0 and "s1" in r.stdout and "app=db" in r.stdout and "ready" in r.stdout
    r = run("disk", "list", "--node", "node-1")
    assert r.exit_code == 0 and "node-1" in r.stdout and "node-2" not in r.stdout


def test_states_are_coloured() -> None:
    assert output.styled("healthy") == "[green]healthy[/green]"
    assert output.styled("degraded") == "[yellow]degraded[/yellow]"
    assert output.styled("faulted") == "[red]faulted[/red]"
    assert output.styled("down") == "[red]down[/red]"
    assert output.styled("odd[x]") == "odd\\[x]"


def test_human_sizes_and_ages() -> None:
    assert output.human_size(0) == "0 B"
    assert output.human_size(4096) == "4 KiB"
    assert output.human_size(1 << 30) == "1 GiB"
    assert output.human_size(3 << 29) == "1.5 GiB"
    assert output.human_size(5 << 40) == "5 TiB"
    assert output.human_size(1 << 50) == "1024 TiB"
    assert output.age(None) == ""
    assert output.age(100.0, now=104.0) == "4s ago"
    assert output.age(100.0, now=100.0 + 7200) == "2h ago"


def test_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(output, "err_console", Console(file=buf, force_terminal=True, width=100))
    with output.progress("cloning data") as update:
        update(None, "pending")
        update(0.5, "running")
    with output.progress("x") as update:
        output.operation_progress(update)({"state": "running", "progress": 0.25})
    assert "cloning data" in buf.getvalue()


def test_no_progress_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(output, "err_console", Console(file=buf, force_terminal=False))
    with output.progress("x") as update:
        update(0.5, "y")
    assert buf.getvalue() == ""


# --- the options every command takes -------------------------------------------------------
def test_api_and_dir_options_and_envvars(fake: FakeManager) -> None:
    assert run("volume", "list", "--api", "http://a:1", "--dir", "/tmp/c").exit_code == 0
    assert run("node", "list", env={"CARGOHOLD_API": "unix:/x.sock"}).exit_code == 0
    assert run("disk", "list", env={"CARGOHOLD_DIR": "/tmp/d"}).exit_code == 0
    assert fake.discovered == [  # type: ignore[attr-defined]
        ("http://a:1", "/tmp/c"),
        ("unix:/x.sock", None),
        (None, "/tmp/d"),
    ]


def test_bad_output_format_is_a_usage_error(fake: FakeManager) -> None:
    r = run("volume", "list", "-o", "xml")
    assert r.exit_code == 2


# --- commands that change things -----------------------------------------------------------
def test_volume_create_waits_until_placed(fake: FakeManager) -> None:
    r = run(
        "volume", "create", "db", "--size", "10GiB", "--replicas", "2", "--no-zone-spread",
        "--node-tag", "a", "--disk-tag", "ssd", "--disk-tag", "nvme",
        "--reclaim-policy", "Retain", "--stale-replica-timeout", "60",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert fake.requests[0] == (
        "POST",
        "http://m:9600/api/v1/volumes",
        {
            "name": "db",
            "size_bytes": 10 << 30,
            "replicas": 2,
            "zone_spread": False,
            "node_tags": ["a"],
            "disk_tags": ["ssd", "nvme"],
            "reclaim_policy": "Retain",
            "stale_replica_timeout": 60.0,
        },
    )
    assert "volume db created: 10 GiB, replicas on node-1/disk-0, node-2/disk-0" in r.stdout
    assert all(rep["state"] == "stopped" for rep in fake.volumes["db"]["replicas"])


def test_volume_create_defaults_no_wait(fake: FakeManager) -> None:
    r = run("volume", "create", "db", "--size", "1GiB", "--no-wait", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.requests[0][2] == {"name": "db", "size_bytes": 1 << 30, "zone_spread": True}
    assert json.loads(r.stdout)["name"] == "db"
    assert len(fake.requests) == 1


def test_attach_prints_the_uri_alone(fake: FakeManager) -> None:
    r = run("volume", "attach", "data", "--node", "node-3")
    assert r.exit_code == 0, r.output
    assert r.stdout == "nbd://127.0.0.1:10809/data\n"
    assert ("POST", "http://m:9600/api/v1/volumes/data/attach", {"node": "node-3"}) in fake.requests


def test_attach_default_node_is_an_up_replica_holder(fake: FakeManager) -> None:
    # node-1 is down, node-3 cordoned: node-2 is the only one up, and holds a replica
    r = run("volume", "attach", "data", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["attached_node"] == "node-2"
    fake.nodes.append(_node("node-0"))  # up and first by name, but holds no replica
    run("volume", "detach", "data")
    assert (
        json.loads(run("volume", "attach", "data", "-o", "json").stdout)["attached_node"]
        == "node-2"
    )


def test_attach_times_out(fake: FakeManager) -> None:
    fake.attach_works = False
    r = run("volume", "attach", "data", "--node", "node-2", "--timeout", "0")
    assert r.exit_code == 7
    assert r.stdout == ""
    assert "error: gave up waiting for volume data after 0s" in r.stderr


def test_detach(fake: FakeManager) -> None:
    run("volume", "attach", "data", "--node", "node-2")
    r = run("volume", "detach", "data")
    assert r.exit_code == 0, r.output
    assert "volume data detached" in r.stdout
    assert fake.volumes["data"]["state"] == "detached"


def test_detach_waits_for_the_engine_to_stop() -> None:
    from cargohold.cli.volume_cmd import detached

    engine = {"node": "node-2", "epoch": 3, "purpose": "attach", "running": True}
    assert not detached({"state": "detached", "engine": engine})
    assert detached({"state": "detached", "engine": {**engine, "running": False}})
    assert detached({"state": "detached", "engine": {**engine, "purpose": "maintenance"}})
    assert detached({"state": "detached", "engine": None})
    assert not detached({"state": "detaching"})


def test_delete_waits_until_gone(fake: FakeManager) -> None:
    r = run("volume", "delete", "data")
    assert r.exit_code == 0, r.output
    assert "volume data deleted" in r.stdout
    assert "data" not in fake.volumes


def test_delete_retained_volume_is_released(fake: FakeManager) -> None:
    fake.volumes["data"]["reclaim_policy"] = "Retain"
    r = run("volume", "delete", "data")
    assert r.exit_code == 0, r.output
    assert "released" in r.stdout and "--purge" in r.stdout
    r = run("volume", "delete", "data", "--purge")
    assert r.exit_code == 0 and "data" not in fake.volumes
    deletes = [url for m, url, _ in fake.requests if m == "DELETE"]
    assert deletes == [
        "http://m:9600/api/v1/volumes/data",
        "http://m:9600/api/v1/volumes/data?purge=true",
    ]


def test_delete_attached_is_a_conflict(fake: FakeManager) -> None:
    run("volume", "attach", "data", "--node", "node-2")
    r = run("volume", "delete", "data")
    assert r.exit_code == 5
    assert r.stderr.startswith("error: volume data is attached; detach it first")


def test_expand_waits_for_the_operation(fake: FakeManager) -> None:
    r = run("volume", "expand", "data", "--size", "2GiB", "-o", "json")
    assert r.exit_code == 0, r.output
    op = json.loads(r.stdout)
    assert op["kind"] == "expand" and op["state"] == "succeeded"
    assert op["args"] == {"size_bytes": 2 << 30}


def test_clone_waits_for_the_clone_operation(fake: FakeManager) -> None:
    r = run("volume", "clone", "data", "copy", "--snapshot", "s1")
    assert r.exit_code == 0, r.output
    assert "volume copy cloned from data@s1" in r.stdout
    post = fake.requests[1]
    assert post[2] == {
        "name": "copy",
        "size_bytes": 1 << 30,
        "source": {"volume": "data", "snapshot": "s1"},
    }
    assert fake.ops["op-1"]["state"] == "succeeded"
    assert fake.volumes["copy"]["state"] == "detached"


def test_failed_operation_exits_1(fake: FakeManager) -> None:
    fake.op_outcome = ("failed", "no engine could run")
    r = run("snapshot", "create", "data", "s2")
    assert r.exit_code == 1
    assert "error: operation op-1 (snapshot-create of data) failed: no engine could run" in r.stderr


def test_snapshot_create_labels(fake: FakeManager) -> None:
    r = run("snapshot", "create", "data", "s2", "--label", "app=db", "--label", "t=1=2")
    assert r.exit_code == 0, r.output
    assert "snapshot s2 of data created" in r.stdout
    assert fake.requests[0][2] == {"name": "s2", "labels": {"app": "db", "t": "1=2"}}
    r = run("snapshot", "create", "data", "s3", "--label", "novalue")
    assert r.exit_code == 2 and "bad label 'novalue'" in r.stderr


def test_snapshot_delete_and_revert(fake: FakeManager) -> None:
    r = run("snapshot", "delete", "data", "s1")
    assert r.exit_code == 0 and "snapshot s1 of data deleted" in r.stdout
    r = run("snapshot", "revert", "data", "s1", "-o", "yaml")
    assert r.exit_code == 0
    assert yaml.safe_load(r.stdout)["kind"] == "snapshot-revert"
    run("volume", "attach", "data", "--node", "node-2")
    r = run("snapshot", "revert", "data", "s1")
    assert r.exit_code == 5 and "detach it" in r.stderr


def test_node_cordon_drain(fake: FakeManager) -> None:
    r = run("node", "cordon", "node-2")
    assert r.exit_code == 0 and "node node-2 cordoned" in r.stdout
    r = run("node", "uncordon", "node-2", "-o", "json")
    assert json.loads(r.stdout)["state"] == "up"
    r = run("node", "drain", "node-2")
    assert r.exit_code == 0 and "draining" in r.stdout
    r = run("node", "drain", "node-2", "--wait", "--timeout", "0")
    assert r.exit_code == 7
    assert "node node-2 still holds data-r000002, logs-r000002 after 0s" in r.stderr
    fake.volumes["logs"]["replicas"] = fake.volumes["logs"]["replicas"][:1]
    fake.volumes["data"]["replicas"] = []
    r = run("node", "drain", "node-2", "--wait")
    assert r.exit_code == 0 and "node node-2 drained" in r.stdout


def test_disk_add(fake: FakeManager) -> None:
    r = run("disk", "add", "node-2", "/mnt/ssd", "--capacity", "500GiB", "--tag", "ssd")
    assert r.exit_code == 0, r.output
    assert fake.requests[-1][2] == {
        "name": "disk-1",  # disk-0 is taken on node-2
        "path": "/mnt/ssd",
        "capacity_bytes": 500 << 30,
        "tags": ["ssd"],
    }
    assert "disk disk-1 added to node node-2: /mnt/ssd, 500 GiB" in r.stdout
    r = run("disk", "add", "node-2", "rel/path", "--capacity", "1GiB")
    assert r.exit_code == 2 and "absolute path" in r.stderr


# --- errors and exit codes -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (_err(404, "NotFound", "volume nope not found"), 4, "volume nope not found"),
        (_err(409, "AlreadyExists", "volume x already exists"), 5, "already exists"),
        (_err(409, "WrongState", "volume x is attached"), 5, "is attached"),
        (_err(400, "InvalidArgument", "volumes only grow"), 2, "volumes only grow"),
        (
            httpx.Response(422, json={"detail": [{"loc": ["body", "name"], "msg": "bad"}]}),
            2,
            "name: bad",
        ),
        (_err(507, "Unschedulable", "need 3 zones, have 2"), 6, "need 3 zones, have 2"),
        (_err(503, "ManagerUnavailable", "store down"), 3, "unavailable: store down"),
        (httpx.Response(500, text="oops"), 1, "HTTP 500"),
    ],
)
def test_error_answers(fake: FakeManager, answer: httpx.Response, code: int, message: str) -> None:
    fake.fail = answer
    r = run("volume", "get", "nope")
    assert r.exit_code == code
    assert r.stdout == ""
    assert r.stderr.startswith("error: ") and message in r.stderr


def test_unschedulable_create(fake: FakeManager) -> None:
    r = run("volume", "create", "big", "--size", "1GiB", "--replicas", "4")
    assert r.exit_code == 6
    assert "error: need 4 nodes with room, have 3" in r.stderr


def test_bad_size_is_a_usage_error(fake: FakeManager) -> None:
    r = run("volume", "create", "db", "--size", "lots")
    assert r.exit_code == 2
    assert "error: --size: cannot read 'lots' as a size" in r.stderr
    assert fake.requests == []


def test_no_local_cluster(tmp_path: Path) -> None:
    r = run("volume", "list", "--dir", str(tmp_path))
    assert r.exit_code == 3
    assert r.stderr.strip() == (
        f"error: no local cluster in {tmp_path} (start one with `cargohold up`) and no --api given"
    )


def test_no_manager_at_url(tmp_path: Path) -> None:
    r = run("node", "list", "--api", f"unix:{tmp_path}/api.sock")
    assert r.exit_code == 3
    assert f"error: no manager at unix:{tmp_path}/api.sock" in r.stderr


# --- local clusters: node kill / start -----------------------------------------------------
def test_node_kill_and_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    class LocalCluster:
        @classmethod
        def load(cls, d: Any) -> LocalCluster:
            calls.append(("load", Path(d)))
            return cls()

        def kill_node(self, name: str) -> bool:
            calls.append(("kill", name))
            return True

        def start_node(self, name: str) -> bool:
            calls.append(("start", name))
            return False

    monkeypatch.setattr("cargohold.launcher.cluster.LocalCluster", LocalCluster)
    (tmp_path / "cluster.json").write_text("{}")
    assert run("node", "kill", "node-2", "--dir", str(tmp_path)).exit_code == 0
    r = run("node", "start", "node-2", env={"CARGOHOLD_DIR": str(tmp_path)})
    assert r.exit_code == 0 and "node node-2 was running already" in r.stdout
    assert calls == [
        ("load", tmp_path),
        ("kill", "node-2"),
        ("load", tmp_path),
        ("start", "node-2"),
    ]
    r = run("node", "kill", "node-2", "--dir", str(tmp_path / "none"))
    assert r.exit_code == 3 and "no local cluster" in r.stderr
