"""The agent's engine gets its weight's CPU priority (EngineProcess.apply_nice): once per
value, again when the weight changes, and a refusal (a weight raised without
CAP_SYS_NICE) is logged once, not retried every round, and the value kept is reported."""

from __future__ import annotations

import errno

import pytest

from cargohold.agent import cpu_priority, engine_process
from cargohold.agent.engine_process import EngineProcess
from cargohold.control.model import EngineAssignment


class FakeChild:
    pid = 4242
    alive = True


def engine(weight: int | None) -> EngineProcess:
    qos = {} if weight is None else {"weight": weight}
    spec = EngineAssignment(volume="v", epoch=1, size_bytes=1 << 20, replicas=[], qos=qos)
    e = EngineProcess(spec, "127.0.0.1", "/nonexistent.sock", "/dev/null")
    e.child = FakeChild()  # type: ignore[assignment]
    e.ready = True
    return e


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []

    def renice(pid: int, nice: int) -> int:
        seen.append((pid, nice))
        return nice

    monkeypatch.setattr(cpu_priority, "renice", renice)
    return seen


def test_applied_once_then_again_when_the_weight_changes(calls: list[tuple[int, int]]) -> None:
    e = engine(10)
    e.apply_nice()
    e.apply_nice()
    assert calls == [(4242, 10)] and e.nice == 10
    assert e.report().status["qos"]["nice"] == 10
    e.spec = e.spec.model_copy(update={"qos": {"weight": 25}})
    e.apply_nice()
    assert calls[-1] == (4242, 6) and e.nice == 6


def test_the_default_weight_is_nice_0(calls: list[tuple[int, int]]) -> None:
    e = engine(None)
    e.apply_nice()
    assert calls == [(4242, 0)] and e.nice == 0


def test_a_refused_value_is_tried_once_and_the_kept_one_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tries: list[int] = []

    def refuse(pid: int, nice: int) -> int:
        tries.append(nice)
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(cpu_priority, "renice", refuse)
    monkeypatch.setattr(engine_process.os, "getpriority", lambda which, pid: 10)
    e = engine(500)
    e.nice = 10
    e.apply_nice()
    e.apply_nice()
    assert tries == [0] and e.nice == 10
    assert "CAP_SYS_NICE" in caplog.text
