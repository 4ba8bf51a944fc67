"""The one HTTP layer to the manager (control/transport.py, issue 15 item 4): manager URLs,
and error answers mapped to the exception tree, the same for the commands' client
(``ManagerClient``) and the node agents' (``ManagerLink``).

The error table is read from docs/control-plane.md, so the documented table, the client
mapping and the manager's own status for each class cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold import errors
from cargohold.agent.manager_link import ManagerLink
from cargohold.control.api import http_status
from cargohold.control.client import ManagerClient
from cargohold.control.model import Registration
from cargohold.control.transport import (
    UNIX_BASE,
    Endpoint,
    error_class,
    error_from_response,
    parse_url,
)
from tests.unit.control import test_client

ROOT = Path(__file__).resolve().parents[3]
unix_server = test_client.unix_server  # the fixture: an HTTP server on a unix socket


def doc_error_table() -> list[tuple[int, str, type[errors.CargoholdError]]]:
    """(status, type, class) for every row of the error table of docs/control-plane.md;
    "`Conflict` (a `Busy`)" is type Conflict, class Busy; no type, or a type that names no
    class (500 `InternalError`): the root class."""
    doc = (ROOT / "docs/control-plane.md").read_text()
    section = doc[doc.index("### Errors") : doc.index("### Routes")]
    rows = []
    for m in re.finditer(r"^\| (\d{3}) \|([^|]*)\|", section, re.M):
        names = re.findall(r"`(\w+)`", m.group(2))
        etype = names[0] if names else ""
        cls = getattr(errors, names[-1], errors.CargoholdError) if names else errors.CargoholdError
        rows.append((int(m.group(1)), etype, cls))
    return rows


TABLE = doc_error_table()


def test_the_doc_table_is_read() -> None:
    assert len(TABLE) == 16
    assert (409, "Conflict", errors.Busy) in TABLE
    assert (500, "InternalError", errors.CargoholdError) in TABLE


def _answer(status: int, etype: str, message: str = "what went wrong") -> httpx.Response:
    body: dict[str, Any] = {"error": {"type": etype, "message": message}}
    return httpx.Response(
        status, json=body, request=httpx.Request("GET", "http://m/api/v1/volumes/x")
    )


@pytest.mark.parametrize(("status", "etype", "cls"), TABLE, ids=[f"{s}-{t}" for s, t, _ in TABLE])
def test_every_documented_error_maps_to_its_class(
    status: int, etype: str, cls: type[errors.CargoholdError]
) -> None:
    e = error_from_response(_answer(status, etype), "http://m")
    assert type(e) is cls
    assert e.detail["http_status"] == status and e.detail["type"] == etype
    assert "what went wrong" in str(e)


@pytest.mark.parametrize(
    ("status", "etype", "cls"),
    [row for row in TABLE if row[1] and row[0] != 422],  # a 422 is FastAPI's own check
    ids=[f"{s}-{t}" for s, t, _ in TABLE if t and s != 422],
)
def test_the_manager_answers_each_class_with_its_documented_status(
    status: int, etype: str, cls: type[errors.CargoholdError]
) -> None:
    from cargohold.control.repository import Conflict

    raised = Conflict if etype == "Conflict" else cls
    assert http_status(raised("x")) == status


@pytest.mark.parametrize(
    ("status", "etype", "cls"),
    [
        (409, "", errors.WrongState),  # no type: the status alone
        (409, "Teapot", errors.WrongState),
        (404, "WrongState", errors.NotFound),  # a type the status does not carry
        (400, "NotFound", errors.InvalidArgument),
        (418, "", errors.CargoholdError),
        (502, "", errors.CargoholdError),
    ],
)
def test_unknown_types_fall_back_on_the_status(
    status: int, etype: str, cls: type[errors.CargoholdError]
) -> None:
    assert error_class(status, etype) is cls
    assert type(error_from_response(_answer(status, etype), "http://m")) is cls


# --- URLs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "base", "uds"),
    [
        ("http://127.0.0.1:9600", "http://127.0.0.1:9600", None),
        ("http://m:9600/", "http://m:9600", None),
        ("https://m.example:443", "https://m.example:443", None),
        ("127.0.0.1:9600", "http://127.0.0.1:9600", None),
        ("unix:/run/cargohold/api.sock", UNIX_BASE, "/run/cargohold/api.sock"),
        ("unix:///run/cargohold/api.sock", UNIX_BASE, "/run/cargohold/api.sock"),
        ("unix:run/api.sock", UNIX_BASE, "run/api.sock"),
    ],
)
def test_url_forms(url: str, base: str, uds: str | None) -> None:
    assert parse_url(url) == Endpoint(url, base, uds)


@pytest.mark.parametrize("url", ["", " ", "unix:", "unix://", "ftp://x", "nbd://h:1/v"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="bad manager URL"):
        parse_url(url)
    with pytest.raises(errors.InvalidArgument, match="bad manager URL"):
        ManagerClient(url)
    with pytest.raises(errors.ConfigError, match="bad manager URL"):  # the agent's --api
        ManagerLink([url])


# --- both clients, against canned answers and a real unix socket --------------------------
REG = Registration(address="127.0.0.1")


def _link(handler: Any, urls: list[str] | None = None) -> ManagerLink:
    return ManagerLink(urls or ["http://m:9600"], transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "etype", "cls"),
    [r for r in TABLE if r[0] < 500],
    ids=[f"{s}-{t}" for s, t, _ in TABLE if s < 500],
)
async def test_the_agent_maps_errors_like_the_commands(
    status: int, etype: str, cls: type[errors.CargoholdError]
) -> None:
    """4xx answers: the manager's word, the same class for the agent as for the CLI (a 409
    WrongState was an InvalidArgument for the agent)."""
    link = _link(lambda r: _answer(status, etype))
    with pytest.raises(cls) as info:
        await link.register("node-1", REG)
    assert type(info.value) is cls
    await link.close()
    same = httpx.MockTransport(lambda r: _answer(status, etype))
    with pytest.raises(cls) as info2, ManagerClient("http://m:9600", transport=same) as c:
        c.volume("x")
    assert type(info2.value) is cls


async def test_the_agent_fails_over_on_5xx_and_no_answer() -> None:
    asked: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        asked.append(r.url.host)
        if r.url.host == "a":
            return _answer(503, "ManagerUnavailable", "etcd unreachable")
        return httpx.Response(200, json={"name": "node-1"})

    link = _link(handler, ["http://a:1", "http://b:2"])
    assert await link.register("node-1", REG) == {"name": "node-1"}
    assert asked == ["a", "b"] and link.current == "http://b:2"
    await link.close()

    link = _link(lambda r: _answer(503, "ManagerUnavailable", "etcd unreachable"))
    with pytest.raises(errors.ManagerUnavailable, match=r"no manager answered: .*etcd unreachable"):
        await link.register("node-1", REG)
    await link.close()


async def test_both_clients_reach_a_unix_socket_the_same_way(unix_server: str) -> None:
    for url in (f"unix:{unix_server}", f"unix://{unix_server}"):
        link = ManagerLink([url])
        got = await link.register("node-1", REG)
        await link.close()
        with ManagerClient(url) as c:
            assert c.request("GET", "/api/v1/nodes/node-1") == got
        assert got == {"ok": True, "path": "/api/v1/nodes/node-1"}
