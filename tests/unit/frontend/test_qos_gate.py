"""The QoS gate (frontend/qos_gate.py) with stand-in connections on a real event loop:
requests over the limit are queued in arrival order across connections and handed on at
the limit's rate; a change of limits applies at once (unlimited: the queue empties); the
requests of a connection that went away are dropped; the counters count what waited."""

from __future__ import annotations

import asyncio
import time

from cargohold.frontend.qos_gate import QosGate
from cargohold.protocol import nbd


class Conn:
    def __init__(self, name: str, got: list[tuple[str, int, float]]) -> None:
        self.name = name
        self.queued = 0
        self.closed = False
        self.got = got

    def admitted(self, req: nbd.Request) -> None:
        self.got.append((self.name, req.handle, time.monotonic()))

    def gone(self) -> bool:
        return self.closed


def read(handle: int, length: int = 4096) -> nbd.Request:
    return nbd.Request(cmd=nbd.CMD_READ, flags=0, handle=handle, offset=0, length=length)


async def test_unlimited_is_never_consulted_and_queues_nothing() -> None:
    gate = QosGate()
    assert not gate.limited and gate.offer(Conn("a", []), read(1))


async def test_queued_requests_go_in_order_at_the_rate() -> None:
    got: list[tuple[str, int, float]] = []
    gate = QosGate({"max_iops": 100})  # 1 s of slack at most 10 ms: one goes at once
    a, b = Conn("a", got), Conn("b", got)
    t0 = time.monotonic()
    now = [gate.offer(c, read(i)) for i, c in enumerate([a, b, a, b, a, b, a, b, a, b, a])]
    assert now[0] and not any(now[2:])
    assert a.queued + b.queued == sum(not x for x in now)
    deadline = time.monotonic() + 5
    while a.queued + b.queued and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert [h for _, h, _ in got] == sorted(h for _, h, _ in got)  # arrival order
    took = got[-1][2] - t0
    assert 0.07 <= took <= 0.5, took  # ~9-10 requests at 100/s
    st = gate.status()
    assert st["throttled_requests_total"] == len(got) and st["throttled_seconds_total"] > 0


async def test_a_change_applies_at_once_and_unlimited_empties_the_queue() -> None:
    got: list[tuple[str, int, float]] = []
    gate = QosGate({"max_iops": 10})
    a = Conn("a", got)
    for i in range(20):
        gate.offer(a, read(i))
    assert a.queued >= 18
    assert gate.configure({}) == {}
    await asyncio.sleep(0.01)
    assert a.queued == 0 and len(got) >= 18 and not gate.limited


async def test_a_gone_connection_s_requests_are_dropped_uncharged() -> None:
    got: list[tuple[str, int, float]] = []
    gate = QosGate({"max_iops": 10})
    a, b = Conn("a", got), Conn("b", got)
    gate.offer(a, read(0))
    for i in range(1, 4):
        gate.offer(a, read(i))
    gate.offer(b, read(9))
    a.closed = True
    await asyncio.sleep(0.25)  # b's request is the next to pay: 0.1 s, not 0.4
    assert [(n, h) for n, h, _ in got] == [("b", 9)]
    assert a.queued == 0
