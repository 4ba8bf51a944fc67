"""While the agent restarts its replica server for a disk added or removed (seconds on a
loaded node), it keeps saying "the same report" so the manager does not count the node down
for a pause of the agent's own making (a lifecycle test saw the node marked down then)."""

from __future__ import annotations

import asyncio
import types

from cargohold.agent.agent import Agent
from cargohold.control.model import Heartbeat
from cargohold.errors import ManagerUnavailable


class FakeManager:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[str, Heartbeat]] = []
        self.fail_first = fail_first

    async def heartbeat(self, node: str, hb: Heartbeat) -> object:
        self.sent.append((node, hb))
        if len(self.sent) <= self.fail_first:
            raise ManagerUnavailable("not now")
        return object()


def agent(manager: FakeManager) -> Agent:
    a = Agent.__new__(Agent)  # only what _keeping_alive reads
    a.interval = 0.05
    a._acked_digest = "d1"
    a._revision = "r7"
    a.manager = manager  # type: ignore[assignment]
    a.config = types.SimpleNamespace(node="node-1")  # type: ignore[assignment]
    return a


async def test_a_slow_step_sends_the_same_report_every_interval_and_stops_after() -> None:
    m = FakeManager(fail_first=1)  # a manager that does not answer is no reason to stop
    a = agent(m)
    async with a._keeping_alive():
        await asyncio.sleep(0.4)
    n = len(m.sent)
    assert n >= 4, m.sent
    for node, hb in m.sent:
        assert node == "node-1" and hb.same_report and hb.report_digest == "d1"
        assert hb.assignments_revision == "r7" and hb.hold == 0
    await asyncio.sleep(0.2)
    assert len(m.sent) == n  # none once the step is over


async def test_a_quick_step_sends_nothing() -> None:
    m = FakeManager()
    async with agent(m)._keeping_alive():
        pass
    await asyncio.sleep(0.1)
    assert m.sent == []
