"""The engine supervisor's state machine (cargohold/agent/engine_process.py, driven by
cargohold/agent/engines.py): every transition of the table, the moves it refuses, and a
volume that is unassigned while its engine is being replaced for a new epoch — the old
agent started the new engine anyway once the old one had stopped, and then forgot it (an
engine running that no agent watches, its volume detached)."""

from __future__ import annotations

import asyncio
import time

import pytest

from cargohold.agent.engine_process import TRANSITIONS, EngineProcess, EngineState
from cargohold.agent.engines import Engines
from cargohold.control.model import EngineAssignment
from cargohold.errors import WrongState

S = EngineState


class FakeChild:
    """An engine child without a process: alive until stopped; its stop waits for ``gate``."""

    started = 0

    def __init__(self, gate: asyncio.Event) -> None:
        FakeChild.started += 1
        self.pid = 40000 + FakeChild.started
        self.argv = ["engine"]
        self.alive = True
        self.started_at = time.monotonic()
        self.gate = gate

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def output(self) -> bytes:
        return b"nbd server listening on 127.0.0.1:10809\n"

    def exit_reason(self) -> str:
        return "" if self.alive else "engine exited with code 0"

    async def stop(self) -> int:
        await self.gate.wait()
        self.alive = False
        return 0


def spec(epoch: int) -> EngineAssignment:
    return EngineAssignment(volume="v", epoch=epoch, size_bytes=1 << 20, replicas=["v-r1@h:1"])


def supervisor(gate: asyncio.Event) -> tuple[Engines, list[str]]:
    saved: list[str] = []
    engines = Engines(
        "127.0.0.1",
        "/nonexistent",
        dict,
        lambda: saved.append("saved"),
        asyncio.Event(),
        lambda *a: None,
        lambda volume: f"/nonexistent/{volume}.sock",
    )

    def process(a: EngineAssignment, port: int = 0) -> EngineProcess:
        eng = EngineProcess(a, "127.0.0.1", "/nonexistent/v.sock", "/dev/null", port)

        def start_child() -> None:
            eng.child = FakeChild(gate)  # type: ignore[assignment]
            eng.ready, eng.status = False, {}

        eng._start_child = start_child  # type: ignore[method-assign]
        return eng

    engines._process = process  # type: ignore[method-assign]
    return engines, saved


def test_every_transition_of_the_table_is_taken_and_others_are_refused() -> None:
    eng = EngineProcess(spec(1), "127.0.0.1", "/nonexistent.sock", "/dev/null")
    assert eng.state is S.DOWN
    events = {e for _, e in TRANSITIONS}
    for state in S:
        for event in events:
            eng.state = state
            to = TRANSITIONS.get((state, event))
            if to is None:
                with pytest.raises(WrongState, match=f"no '{event}' from {state.value}"):
                    eng.move(event)
                assert eng.state is state
            else:
                assert eng.move(event) is to
    # what the supervisor relies on
    assert (S.RETIRING, "spawn") not in TRANSITIONS  # a retired engine never starts again
    assert all(TRANSITIONS.get((s, "retire")) is S.RETIRING for s in S if s is not S.RETIRING)
    assert {to for to in TRANSITIONS.values()} == set(S)


async def test_an_engine_goes_down_starting_running_down_and_is_restarted() -> None:
    gate = asyncio.Event()
    gate.set()
    engines, _ = supervisor(gate)
    engines.converge([spec(1)])
    eng = engines.procs["v"]
    assert eng.state is S.STARTING and not eng.takes_work
    assert engines.watch() == [eng]  # its NBD server listens
    assert eng.state is S.RUNNING and eng.takes_work
    eng.child.alive = False  # type: ignore[union-attr]
    eng.backoff.first = 0.0  # restart without delay
    engines.watch()
    assert eng.state is S.STARTING and FakeChild.started >= 2


async def test_a_volume_unassigned_while_its_engine_is_replaced_stays_stopped() -> None:
    FakeChild.started = 0
    gate = asyncio.Event()
    engines, _ = supervisor(gate)
    engines.converge([spec(1)])
    eng = engines.procs["v"]
    engines.watch()
    assert eng.state is S.RUNNING and FakeChild.started == 1

    engines.converge([spec(2)])  # a new epoch: the old engine is being stopped
    assert eng.state is S.REPLACING
    replacing = eng.transition
    engines.converge([])  # ... and the volume leaves this node meanwhile
    assert eng.state is S.RETIRING
    retiring = eng.transition
    assert replacing is not None and retiring is not None
    await asyncio.sleep(0)
    gate.set()  # the old engine exits
    await asyncio.wait_for(asyncio.gather(replacing, retiring), 5.0)

    assert FakeChild.started == 1, "an engine was started for a volume no longer assigned"
    assert "v" not in engines.procs
    assert not any(getattr(e.child, "alive", False) for e in engines.procs.values())


async def test_a_replacement_starts_the_new_epoch() -> None:
    FakeChild.started = 0
    gate = asyncio.Event()
    gate.set()
    engines, _ = supervisor(gate)
    engines.converge([spec(1)])
    eng = engines.procs["v"]
    engines.watch()
    engines.converge([spec(2)])
    assert eng.transition is not None
    await asyncio.wait_for(eng.transition, 5.0)
    assert eng.state is S.STARTING and eng.epoch == 2 and FakeChild.started == 2
    engines.watch()
    assert eng.state is S.RUNNING


async def test_an_engine_without_its_certificate_yet_stays_down_and_is_tried_again() -> None:
    """A joined agent's engine starts only with the certificate the manager signed for it
    (agent/credentials.py): until that arrives, a clear error, the engine DOWN, the agent
    going on (it raised out of converge before)."""
    from cargohold.errors import ConfigError

    gate = asyncio.Event()
    gate.set()
    engines, _ = supervisor(gate)
    real = engines._process
    missing = [True]

    def process(a: EngineAssignment, port: int = 0) -> EngineProcess:
        eng = real(a, port)
        started = eng._start_child

        def start_child() -> None:
            if missing[0]:
                raise ConfigError("cannot give the engine of v a certificate: not signed yet")
            started()

        eng._start_child = start_child  # type: ignore[method-assign]
        return eng

    engines._process = process  # type: ignore[method-assign]
    engines.converge([spec(1)])
    eng = engines.procs["v"]
    assert eng.state is S.DOWN and "not signed yet" in eng.error
    missing[0] = False
    eng.backoff.first = 0.0
    eng.backoff.reset()
    engines.converge([spec(1)])
    engines.watch()
    assert eng.state in (S.STARTING, S.RUNNING)
