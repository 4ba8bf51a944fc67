"""The agent gives a running engine new QoS limits (EngineProcess.qos_due / push_qos): only
when the engine's last status shows other limits than the assignment's, one push at a
time; the engine's answer becomes the status kept; an engine's refusal is logged and the
push is tried again at the next heartbeat; the limits go on the engine's command line."""

from __future__ import annotations

from typing import Any

import pytest

from cargohold.agent.engine_process import EngineProcess
from cargohold.control.model import EngineAssignment
from cargohold.errors import InvalidArgument


def engine(qos: dict[str, Any]) -> EngineProcess:
    spec = EngineAssignment(volume="v", epoch=1, size_bytes=1 << 20, replicas=["v-r1@h:1"], qos=qos)
    eng = EngineProcess(spec, "127.0.0.1", "/nonexistent.sock", "/dev/null")
    eng.credentials = lambda volume: None
    return eng


class Link:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    async def call(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        self.calls.append(request)
        if self.fail:
            raise InvalidArgument("max_iops=1 is not valid")
        return {"qos": {"limits": request["limits"], "throttled_requests_total": 0}}


def running(eng: EngineProcess, monkeypatch: pytest.MonkeyPatch, limits: dict) -> None:  # type: ignore[type-arg]
    monkeypatch.setattr(EngineProcess, "running", property(lambda self: True))
    eng.status = {"volume": "v", "qos": {"limits": limits}}


async def test_a_push_only_when_the_engine_applies_other_limits(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    eng = engine({"max_iops": 1000})
    running(eng, monkeypatch, {"max_iops": 1000})
    assert not eng.qos_due()
    eng.spec = eng.spec.model_copy(update={"qos": {"max_iops": 2000}})
    assert eng.qos_due()
    link = Link()
    eng.link = link  # type: ignore[assignment]
    await eng.push_qos()
    assert link.calls == [{"op": "qos", "limits": {"max_iops": 2000}}]
    assert eng.status["qos"]["limits"] == {"max_iops": 2000} and not eng.qos_due()


async def test_an_engine_without_qos_in_its_status_is_left_alone(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    eng = engine({"max_iops": 1000})
    monkeypatch.setattr(EngineProcess, "running", property(lambda self: True))
    eng.status = {"volume": "v"}  # an engine of an older version
    assert not eng.qos_due()


async def test_a_refusal_is_tried_again_later(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    eng = engine({"max_iops": 2000})
    running(eng, monkeypatch, {})
    eng.link = Link(fail=True)  # type: ignore[assignment]
    await eng.push_qos()
    assert eng.qos_due()  # still differs: the next heartbeat pushes again


def test_the_limits_go_on_the_command_line() -> None:
    argv = engine({"max_iops": 1000}).argv()
    assert argv[argv.index("--qos") + 1] == '{"max_iops": 1000}'
    assert "--qos" not in engine({}).argv()


async def test_a_fair_share_lowers_max_iops_and_is_reported(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    eng = engine({"weight": 300, "max_iops": 1000})
    running(eng, monkeypatch, {"weight": 300, "max_iops": 1000})
    eng.fair_iops = 300  # the node is busy: the agent's NodeShare gave it 300
    assert eng.qos_due()
    link = Link()
    eng.link = link  # type: ignore[assignment]
    await eng.push_qos()
    assert link.calls[-1]["limits"] == {"weight": 300, "max_iops": 300}
    assert eng.report().status["qos"]["fair_iops"] == 300
    eng.fair_iops = 5000  # a share above its own limit: its own limit holds
    assert eng.wanted_qos()["max_iops"] == 1000
    eng.fair_iops = None  # not busy any more: back to the assignment's limits
    await eng.push_qos()
    assert link.calls[-1]["limits"] == {"weight": 300, "max_iops": 1000}
    assert "fair_iops" not in eng.report().status["qos"]


async def test_a_bandwidth_share_lowers_max_bandwidth_and_is_reported(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    eng = engine({"max_bandwidth": 200 << 20})
    running(eng, monkeypatch, {"max_bandwidth": 200 << 20})
    eng.fair_bandwidth = 50 << 20  # the node's bandwidth is busy: NodeShare gave it 50 MiB/s
    assert eng.qos_due()
    link = Link()
    eng.link = link  # type: ignore[assignment]
    await eng.push_qos()
    assert link.calls[-1]["limits"] == {"max_bandwidth": 50 << 20}
    assert eng.report().status["qos"]["fair_bandwidth"] == 50 << 20
    eng.fair_bandwidth = 500 << 20  # above its own limit: its own limit holds
    assert eng.wanted_qos()["max_bandwidth"] == 200 << 20
    eng.fair_bandwidth = None
    await eng.push_qos()
    assert link.calls[-1]["limits"] == {"max_bandwidth": 200 << 20}
    assert "fair_bandwidth" not in eng.report().status["qos"]
