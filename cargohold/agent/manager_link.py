"""The node agent's client for the manager's REST API: register the node, send heartbeats.

Several manager URLs may be given (``http://HOST:PORT`` or ``unix:/PATH``); every manager
serves the API, so a request goes to the one that answered last and fails over to the
others when it cannot be reached or answers 5xx. 4xx answers are the manager's word and
are not retried elsewhere; they become the same exceptions as for every other client of
the manager (``control/transport.py``: URLs, httpx clients and the error mapping live
there): 404 (``NotFound``) on a heartbeat means the manager does not know the node (its
state was reset) and the agent registers again.

The answer to a heartbeat is read leniently (``parse_assignments``): an entry that does
not fit the schema is logged and skipped, so one bad assignment never stops the others.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from cargohold.control.model import (
    Assignments,
    DiskReport,
    EngineAssignment,
    Heartbeat,
    OperationAssignment,
    Registration,
    ReplicaAssignment,
)
from cargohold.control.transport import ClientCredentials, async_client, error_from_response
from cargohold.errors import ConfigError, InvalidArgument, ManagerUnavailable

log = logging.getLogger("cargohold.agent")

READ_TIMEOUT, CONNECT_TIMEOUT = 5.0, 2.0  # seconds
TIMEOUT = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
M = TypeVar("M", bound=BaseModel)


def _client(
    url: str,
    timeout: httpx.Timeout,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    try:
        # the agent's own certificate (agent/<node>, $CARGOHOLD_TLS_DIR), never a token
        return async_client(url, timeout, transport, ClientCredentials.of_daemon(), verify)
    except InvalidArgument as e:  # a bad --api is the agent's configuration
        raise ConfigError(str(e)) from None


class ManagerLink:
    def __init__(
        self,
        urls: list[str],
        timeout: httpx.Timeout = TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,  # tests' canned answers
        verify: ssl.SSLContext | None = None,  # https: trust and our client certificate
    ) -> None:
        if not urls:
            raise ConfigError("give at least one manager URL (--api)")
        self.urls = list(urls)
        self._timeout = timeout
        self._clients = [_client(u, timeout, transport, verify) for u in self.urls]
        self._current = 0  # the manager that answered last
        self.complaints = Complaints()

    @property
    def current(self) -> str:
        return self.urls[self._current]

    async def use_tls(self, verify: ssl.SSLContext) -> None:
        """New clients with a new TLS context (the agent joined, or renewed its
        certificate: httpx keeps the context it was made with)."""
        old, self._clients = (
            self._clients,
            [_client(u, self._timeout, None, verify) for u in self.urls],
        )
        for c in old:
            await c.aclose()

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()

    async def register(self, node: str, registration: Registration) -> dict[str, Any]:
        """PUT /api/v1/nodes/{node} -> the Node record (idempotent)."""
        return await self._request("PUT", f"/api/v1/nodes/{node}", registration.model_dump())

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``path`` (enrollment: certificates), with the same failover."""
        return await self._request("POST", path, body)

    async def heartbeat(self, node: str, heartbeat: Heartbeat) -> Assignments:
        """POST /api/v1/nodes/{node}/heartbeat -> what should run on the node."""
        data = await self._request(
            "POST",
            f"/api/v1/nodes/{node}/heartbeat",
            heartbeat.model_dump(mode="json"),
            # a long poll: the manager may hold the answer for ``hold`` seconds
            timeout=httpx.Timeout(READ_TIMEOUT + heartbeat.hold, connect=CONNECT_TIMEOUT)
            if heartbeat.hold
            else None,
        )
        return parse_assignments(data, self.complaints)

    async def _request(
        self, method: str, path: str, body: dict[str, Any], timeout: httpx.Timeout | None = None
    ) -> Any:
        failures = []
        n = len(self._clients)
        for i in range(n):
            idx = (self._current + i) % n
            url = self.urls[idx]
            try:
                if timeout is None:
                    r = await self._clients[idx].request(method, path, json=body)
                else:
                    r = await self._clients[idx].request(method, path, json=body, timeout=timeout)
            except httpx.HTTPError as e:
                failures.append(f"{url}: {type(e).__name__}: {e}".rstrip(": "))
                continue
            if r.status_code >= 500:
                failures.append(f"{url}: HTTP {r.status_code} {_message(r)}")
                continue
            if idx != self._current:
                log.info("talking to manager %s now", url)
                self._current = idx
            if r.status_code >= 400:
                raise error_from_response(r, url)
            try:
                return r.json()
            except ValueError:
                failures.append(f"{url}: the answer is not JSON")
        raise ManagerUnavailable("no manager answered: " + "; ".join(failures))


def _message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return str(err.get("message") or err)
    except (ValueError, AttributeError):
        return r.text[:300]


class Complaints:
    """Log a complaint about the manager's answers once, not every heartbeat it repeats."""

    def __init__(self, most: int = 1000) -> None:
        self.said: set[str] = set()
        self.most = most

    def error(self, message: str, *args: Any) -> None:
        text = message % args if args else message
        if text in self.said:
            log.debug("%s", text)
            return
        if len(self.said) >= self.most:
            self.said.clear()
        self.said.add(text)
        log.error("%s", text)


def parse_assignments(data: Any, complaints: Complaints | None = None) -> Assignments:
    """The heartbeat's answer, keeping every entry that fits and logging those that do not."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"the heartbeat's answer is not an object: {str(data)[:200]}")
    say = complaints or Complaints()
    out = Assignments(
        replicas=_entries(data, "replicas", ReplicaAssignment, say),
        engines=_entries(data, "engines", EngineAssignment, say),
        operations=_entries(data, "operations", OperationAssignment, say),
        disks=_entries(data, "disks", DiskReport, say),
    )
    interval = data.get("heartbeat_interval")
    if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
        out.heartbeat_interval = min(max(float(interval), 0.05), 60.0)
    revision = data.get("revision")
    if isinstance(revision, str):
        out.revision = revision
    cluster_id = data.get("cluster_id")
    if isinstance(cluster_id, str):
        out.cluster_id = cluster_id
    out.unchanged = data.get("unchanged") is True
    out.resend = data.get("resend") is True
    return out


def _entries(data: dict[str, Any], key: str, model: type[M], say: Complaints) -> list[M]:
    items = data.get(key) or []
    if not isinstance(items, list):
        say.error("bad assignments: %r is not a list; ignoring it", key)
        return []
    out = []
    for item in items:
        try:
            out.append(model.model_validate(item))
        except ValidationError as e:
            why = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'entry'}: {err['msg']}"
                for err in e.errors()
            )
            say.error("skipping a bad %s assignment %s: %s", key[:-1], str(item)[:300], why)
    return out
