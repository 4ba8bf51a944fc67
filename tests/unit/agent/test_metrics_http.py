"""The agent's metrics listener (agent/metrics_http.py) on loopback, plain HTTP: /metrics
answers the exposition; bad requests get 4xx and the listener keeps serving; a flood of
idle connections past MAX_CONNECTIONS is closed at once and does not stop a scrape after
it; identities without metrics:read are refused (the check the TLS listener makes)."""

from __future__ import annotations

import asyncio

import pytest

from cargohold.agent import metrics_http
from cargohold.agent.metrics_http import MetricsListener
from cargohold.security.identity import Identity, Role

BODY = b'# TYPE cargohold_agent_engines gauge\ncargohold_agent_engines{node="n"} 2.0\n'


async def render() -> bytes:
    return BODY


async def ask(port: int, raw: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    await w.drain()
    got = await asyncio.wait_for(r.read(), 5)
    w.close()
    return got


@pytest.fixture
async def listener():  # type: ignore[no-untyped-def]
    m = MetricsListener("127.0.0.1", 0, render, None, lambda: None)
    await m.start()
    yield m
    await m.stop()


async def test_metrics_and_bad_requests(listener: MetricsListener) -> None:
    port = listener.port
    got = await ask(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(BODY)
    assert b"text/plain; version=0.0.4" in got
    assert (await ask(port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert (await ask(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    assert (await ask(port, b"\x00\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
    big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
    assert (await ask(port, big)).startswith(b"HTTP/1.1 431")
    head = await ask(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and not head.endswith(BODY)
    # still serving after all that
    assert (await ask(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")).endswith(BODY)
    assert listener.served == 3


async def test_a_flood_of_idle_connections_is_bounded(
    listener: MetricsListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_http, "READ_TIMEOUT", 1.0)
    idle = [
        await asyncio.open_connection("127.0.0.1", listener.port)
        for _ in range(metrics_http.MAX_CONNECTIONS + 4)
    ]
    await asyncio.sleep(0.2)
    assert listener.refused >= 4  # the ones past the limit were closed at once
    for _, w in idle:
        w.close()
    await asyncio.sleep(0.2)
    assert (await ask(listener.port, b"GET /metrics HTTP/1.1\r\n\r\n")).endswith(BODY)


@pytest.mark.parametrize(
    ("role", "tenant", "cluster", "status"),
    [
        (Role.READER, None, "c1", None),
        (Role.ADMIN, None, "c1", None),
        (Role.OPERATOR, None, "c1", None),
        (Role.AGENT, None, "c1", 403),
        (Role.ENGINE, None, "c1", 403),
        (Role.READER, "team-a", "c1", 403),  # a tenant's reader: metrics name every volume
        (Role.READER, None, "other", 401),
    ],
)
def test_who_may_read_metrics(
    role: Role, tenant: str | None, cluster: str, status: int | None
) -> None:
    m = MetricsListener("127.0.0.1", 0, render, None, lambda: "c1")
    why = m._refusal(Identity(cluster, role, "x", tenant))
    assert (why[0] if why else None) == status
    assert m._refusal(None) is not None and m._refusal(None)[0] == 401  # type: ignore[index]
