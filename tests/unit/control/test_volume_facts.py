"""The control-plane facts of a volume, each defined once (issue 15, item 3): "the engine
runs" and "attached" are properties of the model (``Volume.engine_runs``,
``Volume.attached``) that the reconcilers, the heartbeat handler and the API's views read;
"attached", "detached" and "healthy" of the API's JSON are the client's
(``volume_attached``, ``volume_detached``, ``volume_healthy``), and its ``wait_*``
helpers wait for them with a deadline."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cargohold.control.client import (
    ManagerClient,
    WaitTimeout,
    volume_attached,
    volume_detached,
    volume_healthy,
    volume_placed,
)
from cargohold.control.model import (
    EngineSpec,
    EngineStatus,
    Node,
    Replica,
    ReplicaMode,
    Volume,
    VolumeState,
)
from cargohold.control.views import volume_view
from tests.unit.control.test_client import FakeClock

GiB = 1 << 30


def vol(**kw: Any) -> Volume:
    base: dict[str, Any] = {"name": "data", "size_bytes": GiB, "replicas_wanted": 1, "epoch": 3}
    return Volume(**{**base, **kw})


def status(node: str = "node-1", epoch: int = 3, running: bool = True) -> EngineStatus:
    return EngineStatus(node=node, epoch=epoch, running=running, endpoint="nbd://h:1/data")


ENGINE = EngineSpec(node="node-1", epoch=3, replicas=["r1"])


# --- the model -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("engine", "st", "runs"),
    [
        (ENGINE, status(), True),
        (ENGINE, status(running=False), False),
        (ENGINE, status(epoch=2), False),  # the engine of an older epoch
        (ENGINE, status(node="node-2"), False),  # on another node than the wanted engine's
        (None, status(), False),  # no engine is wanted
        (ENGINE, None, False),  # nothing reported yet
    ],
)
def test_engine_runs(engine: EngineSpec | None, st: EngineStatus | None, runs: bool) -> None:
    assert vol(engine=engine, engine_status=st).engine_runs is runs


@pytest.mark.parametrize(
    ("kw", "attached", "state"),
    [
        ({"attach_node": "node-1"}, True, VolumeState.ATTACHED),
        ({"attach_node": "node-2"}, False, VolumeState.ATTACHING),  # takeover: the old engine
        ({"attach_node": "node-1", "engine_status": status(node="node-2")}, False, "attaching"),
        (
            {
                "attach_node": "node-1",
                "engine": ENGINE.model_copy(update={"purpose": "maintenance"}),
            },
            False,
            VolumeState.ATTACHING,
        ),
        ({"attach_node": None}, False, VolumeState.DETACHING),
        ({"attach_node": None, "engine_status": status(running=False)}, False, "detached"),
    ],
)
def test_attached(kw: dict[str, Any], attached: bool, state: str) -> None:
    v = vol(**{"engine": ENGINE, "engine_status": status(), **kw})
    assert v.attached is attached
    assert v.state == state


def test_the_view_says_running_only_for_the_wanted_engines_node() -> None:
    """The API's ``engine.running`` and the replicas' modes follow ``engine_runs``: a status
    at the wanted epoch reported from another node than the wanted engine's is not the
    engine running (the view checked the epoch only)."""
    nodes = {n: Node(name=n, address="127.0.0.1") for n in ("node-1", "node-2")}
    rep = Replica(id="r1", volume="data", node="node-1", disk="d", exists=True, mode=ReplicaMode.RW)
    here = volume_view(vol(engine=ENGINE, engine_status=status()), [rep], nodes)
    assert here["engine"]["running"] is True and here["replicas"][0]["mode"] == "RW"
    there = volume_view(vol(engine=ENGINE, engine_status=status(node="node-2")), [rep], nodes)
    assert there["engine"]["running"] is False
    assert there["replicas"][0]["mode"] is None and there["replicas"][0]["state"] == "stopped"


# --- the client ------------------------------------------------------------------------
ATTACHED = {
    "name": "data",
    "state": "attached",
    "endpoint": "nbd://h:1/data",
    "attached_node": "node-1",
    "robustness": "healthy",
    "engine": {"node": "node-1", "epoch": 3, "purpose": "attach", "running": True},
}


def test_volume_attached() -> None:
    assert volume_attached(ATTACHED) and volume_attached(ATTACHED, "node-1")
    assert not volume_attached(ATTACHED, "node-2")
    assert not volume_attached({**ATTACHED, "endpoint": ""})
    assert not volume_attached({**ATTACHED, "state": "attaching"})


def test_volume_detached() -> None:
    gone = {"state": "detached", "attached_node": None, "engine": None}
    assert volume_detached(gone)
    assert not volume_detached(ATTACHED)
    assert not volume_detached({**gone, "state": "detaching"})
    assert not volume_detached({**gone, "attached_node": "node-1"})  # attaching again
    assert not volume_detached({**gone, "engine": ATTACHED["engine"]})  # not stopped yet
    assert volume_detached({**gone, "engine": {**ATTACHED["engine"], "purpose": "maintenance"}})


def test_volume_placed() -> None:
    reps = [{"id": "r1", "state": "stopped"}, {"id": "r2", "state": "stopped"}]
    new = {"state": "detached", "replicas_wanted": 2, "replicas": reps}
    assert volume_placed(new)
    assert not volume_placed({**new, "state": "creating"})
    assert not volume_placed({**new, "replicas": reps[:1]})  # one still to be placed
    assert not volume_placed({**new, "replicas": [reps[0], {"id": "r2", "state": "pending"}]})


def test_volume_healthy() -> None:
    assert volume_healthy(ATTACHED) and not volume_healthy({**ATTACHED, "robustness": "degraded"})


def client(answers: list[dict[str, Any]]) -> tuple[ManagerClient, list[str]]:
    """A client whose GET of the volume answers ``answers`` in turn (the last one stays)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=answers[min(len(seen), len(answers)) - 1])

    clock = FakeClock()
    c = ManagerClient(
        "http://m:9600",
        transport=httpx.MockTransport(handler),
        poll_interval=1.0,
        clock=clock,
        sleep=clock.sleep,
    )
    return c, seen


def test_wait_attached_polls_until_attached_on_the_node() -> None:
    attaching = {**ATTACHED, "state": "attaching", "endpoint": ""}
    elsewhere = {**ATTACHED, "attached_node": "node-2"}
    c, seen = client([attaching, elsewhere, ATTACHED])
    assert c.wait_attached("data", "node-1", 10) == ATTACHED
    assert seen == ["/api/v1/volumes/data"] * 3


def test_wait_attached_healthy() -> None:
    degraded = {**ATTACHED, "robustness": "degraded"}
    c, seen = client([degraded, degraded, ATTACHED])
    assert c.wait_attached("data", None, 10, healthy=True) == ATTACHED
    assert len(seen) == 3


def test_waits_time_out_with_the_last_state() -> None:
    attaching = {**ATTACHED, "state": "attaching", "endpoint": "", "robustness": "unknown"}
    c, seen = client([attaching])
    with pytest.raises(WaitTimeout, match=r"volume data after 3s \(last seen: state attaching"):
        c.wait_attached("data", "node-1", 3)
    assert len(seen) == 4  # at 0, 1, 2 and 3 s
    with pytest.raises(WaitTimeout, match="last seen: state attached"):
        client([ATTACHED])[0].wait_detached("data", 2)
    with pytest.raises(WaitTimeout, match="robustness degraded"):
        client([{**ATTACHED, "robustness": "degraded"}])[0].wait_healthy("data", 2)


def test_wait_placed() -> None:
    pending = {"state": "creating", "replicas_wanted": 1, "replicas": [{"state": "pending"}]}
    done = {"state": "detached", "replicas_wanted": 1, "replicas": [{"state": "stopped"}]}
    c, seen = client([pending, pending, done])
    assert c.wait_placed("data", 10) == done and len(seen) == 3


def test_wait_detached_and_healthy() -> None:
    gone = {"name": "data", "state": "detached", "attached_node": None, "engine": None}
    c, _ = client([ATTACHED, {**ATTACHED, "state": "detaching", "attached_node": None}, gone])
    assert c.wait_detached("data", 10) == gone
    c, _ = client([{**ATTACHED, "robustness": "degraded"}, ATTACHED])
    assert c.wait_healthy("data", 10) == ATTACHED
