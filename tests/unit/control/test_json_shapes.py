"""The JSON shapes scripts rely on, pinned three ways: what `cargohold volume get -o json`
and `cargohold node list -o json` print from a real manager (the API's views over the
in-memory store, driven by the simulated cluster), the fields issue 4 promises, and the
examples in docs/control-plane.md — a field added, renamed or dropped in one of them and
not the others fails here."""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cargohold.cli.main import app as cli
from cargohold.control.api import build
from cargohold.control.client import ManagerClient
from cargohold.control.model import NodeState, ReplicaMode, Robustness, VolumeState
from cargohold.control.service import AttachRequest, VolumeCreate
from cargohold.control.views import NodeView, ReplicaView, VolumeView
from tests.unit.control.sim import Sim

with warnings.catch_warnings():  # "use httpx2": the sync transport works as it is
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs/control-plane.md").read_text()
GiB = 1 << 30

# issue 4: "volume get -o json includes at least ..."; "node list -o json gives ..."
VOLUME_PROMISED = {
    "name": str,
    "size_bytes": int,
    "replicas_wanted": int,
    "state": str,
    "robustness": str,
    "endpoint": str,
    "attached_node": (str, type(None)),
    "replicas": list,
}
REPLICA_PROMISED = {"id": str, "node": str, "mode": (str, type(None))}
NODE_PROMISED = {"name": str, "zone": str, "state": str, "address": str}


def doc_example(heading: str) -> Any:
    """The first ```json block after ``heading`` in docs/control-plane.md, comments cut."""
    at = DOC.index(heading)
    block = re.search(r"```json\n(.*?)```", DOC[at:], re.S)
    assert block, f"no JSON example after {heading!r}"
    return json.loads(re.sub(r"\s+//[^\n]*", "", block.group(1)))


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Sim:
    """Three simulated nodes; volume `data` attached to node-1 with 3 RW replicas."""
    sim = Sim(monkeypatch, nodes=3, zones=["a", "b", "c"])

    async def setup() -> None:
        await sim.start()
        await sim.service.create_volume(VolumeCreate(name="data", size_bytes=GiB))
        await sim.step(rounds=2)
        await sim.service.attach("data", AttachRequest(node="node-1"))
        await sim.step(rounds=3)
        await sim.service.cordon("node-3", True)

    asyncio.run(setup())
    client = TestClient(build(sim.service))

    def discover(api: str | None = None, dir: str | None = None, **kw: Any) -> ManagerClient:
        return ManagerClient("http://t", transport=client._transport, poll_interval=0.0)

    monkeypatch.setattr(ManagerClient, "discover", staticmethod(discover))
    return sim


def cargohold(*args: str) -> Any:
    env = {"COLUMNS": "200", "CARGOHOLD_API": None, "CARGOHOLD_DIR": None}
    r = CliRunner().invoke(cli, [*args, "-o", "json"], env=env)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def has(obj: dict[str, Any], promised: dict[str, Any], what: str) -> None:
    for key, types in promised.items():
        assert key in obj, f"{what}: {key!r} is missing"
        assert isinstance(obj[key], types), f"{what}: {key!r} is {obj[key]!r}"


def test_volume_get_json_is_the_promised_shape(cluster: Sim) -> None:
    v = cargohold("volume", "get", "data")
    has(v, VOLUME_PROMISED, "volume get")
    assert v["state"] == "attached" and v["robustness"] == "healthy"
    assert v["endpoint"] == "nbd://node-1:10809/data" and v["attached_node"] == "node-1"
    assert len(v["replicas"]) == 3
    for r in v["replicas"]:
        has(r, REPLICA_PROMISED, "a replica")
        assert r["mode"] == "RW"
    assert set(v) == set(VolumeView.model_fields)
    assert set(v["replicas"][0]) == set(ReplicaView.model_fields)


def test_node_list_json_is_the_promised_shape(cluster: Sim) -> None:
    nodes = cargohold("node", "list")
    assert [n["name"] for n in nodes] == ["node-1", "node-2", "node-3"]
    for n in nodes:
        has(n, NODE_PROMISED, "node list")
        assert set(n) == set(NodeView.model_fields)
    assert [(n["zone"], n["state"]) for n in nodes] == [("a", "up"), ("b", "up"), ("c", "cordoned")]


def test_the_documented_examples_have_the_real_fields(cluster: Sim) -> None:
    v = cargohold("volume", "get", "data")
    doc = doc_example("### `Volume` (GET /api/v1/volumes/{volume})")
    assert set(doc) == set(v), "docs/control-plane.md's Volume example differs from the API"
    assert set(doc["engine"]) == set(v["engine"])
    for r in doc["replicas"]:
        assert set(r) == set(v["replicas"][0]), "the documented replica differs from the API"
    node = doc_example("### `Node` (GET /api/v1/nodes)")
    assert set(node) == set(cargohold("node", "list")[0])


def test_the_documented_values_are_the_real_ones() -> None:
    """The enumerations the docs list next to the Volume example and in the tables."""
    block = DOC[DOC.index("### `Volume` (GET /api/v1/volumes/{volume})") :]
    states = re.search(r'"state": "\w+",\s+// ([a-z|]+)', block)
    robust = re.search(r'"robustness": "\w+",\s+// ([a-z|]+)', block)
    assert states and set(states.group(1).split("|")) == {s.value for s in VolumeState}
    assert robust and set(robust.group(1).split("|")) == {s.value for s in Robustness}
    assert all(f"`{m.value}`" in block for m in ReplicaMode)
    assert all(f"`{s.value}`" in DOC for s in NodeState)
    for state in ("pending", "stopped", "running", "rebuilding", "failed", "deleting"):
        assert f"| `{state}` |" in DOC, f"replica state {state} is not in the table"
