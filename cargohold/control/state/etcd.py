"""The etcd state store: several managers share one etcd cluster (3.4 or newer).

``open_store("etcd:http://HOST:2379[,http://HOST2:2379...]")`` builds it for the manager.
It speaks etcd's v3 HTTP/JSON gateway (POST /v3/kv/*, /v3/lease/*): keys and values travel
base64-encoded, and 64-bit integers come back as JSON strings, with zero-valued fields left
out of answers altogether (no ``kvs`` when nothing matched, no ``succeeded`` when a
transaction failed, no ``TTL`` when a lease is gone).

Every key gets a namespace prepended (default ``/cargohold``, so several clusters can share
one etcd) and stripped from answers. With a namespace, keys must start with ``/``, so that
``/cargohold`` can never see ``/cargohold2``'s keys.

Endpoints are tried in turn, starting with the last one that answered. A request that was
never sent (connection refused or timed out) moves on to the next endpoint; so does a read
that failed in any way. A write whose outcome is unknown (the connection broke after it was
sent) is not repeated: the caller gets ``ManagerUnavailable`` and re-reads.

Leadership of a role is the key ``/leader/<role>`` holding the holder's name, attached to a
lease of ``ttl`` seconds (etcd raises a lease below its minimum — about 1.5 election
timeouts, 2 s by default — to that minimum). Each campaign keeps the holder's lease alive
and puts the key if it is absent; when the holder stops campaigning, the lease expires and
etcd deletes the key. The leader key lives in the namespace too, so ``range("/")`` lists it.

TLS: with ``tls`` (a credentials directory: the manager's etcd client certificate from
etcd's CA, ``security/etcd.py``; ``cargohold manager --etcd-tls-dir``) every endpoint must
be https://, the client presents its certificate and checks etcd's against the ``ca.crt``
there; a renewed certificate is picked up by the next new connection (the HTTP client is
rebuilt when the files change). http:// endpoints without ``tls`` still work, loudly.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from typing import Any

import httpx

from cargohold.control.state.base import Compare, Delete, Entry, Put, StateStore
from cargohold.control.state.memory import check_ops
from cargohold.errors import (
    CargoholdError,
    ConfigError,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
)
from cargohold.security.tls import Credentials

log = logging.getLogger("cargohold.manager")
DEFAULT_NAMESPACE = "/cargohold"
GRPC_INVALID_ARGUMENT = 3
GRPC_NOT_FOUND = 5  # e.g. "etcdserver: requested lease not found"
GRPC_UNAVAILABLE = 14  # no leader, leader changed, request timed out
JSON = dict[str, Any]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with ``prefix`` (etcd's ``range_end``):
    the prefix with its last byte plus one; b"\\0" (every key) when there is no such key."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


class _Unsent(Exception):
    """The request did not reach this endpoint (or was a read): try the next one."""


class EtcdStateStore(StateStore):
    def __init__(
        self,
        endpoints: list[str],
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        tls: Credentials | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("the etcd state store needs at least one endpoint")
        plain = [e for e in endpoints if e.startswith("http://")]
        if tls is not None and plain:
            raise ConfigError(
                f"etcd endpoint {plain[0]} is http:// but a client certificate was given "
                f"({tls.directory}): use https://"
            )
        if plain:
            log.warning(
                "PLAINTEXT: the state store's etcd %s is plain http: no TLS, no client "
                "certificate; anyone who reaches it reads and changes the cluster's state "
                "(use https:// and --etcd-tls-dir: docs/security.md, etcd)",
                plain[0],
            )
        if namespace.endswith("/"):
            raise ConfigError(f"etcd namespace {namespace!r} must not end with '/'")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.namespace = namespace
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._client: httpx.AsyncClient | None = None
        self._tls = tls
        self._tls_context: object = None  # the context self._client was made with
        self._retired: list[httpx.AsyncClient] = []  # made with older credentials
        self._current = 0  # index of the endpoint that answered last
        self._leases: dict[tuple[str, str], int] = {}  # (role, holder) -> lease ID
        self._campaign_lock = asyncio.Lock()

    # --- keys ----------------------------------------------------------------------------
    def _key(self, key: str) -> bytes:
        if self.namespace and not key.startswith("/"):
            raise InvalidArgument(f"etcd state store: key {key!r} must start with '/'")
        return (self.namespace + key).encode()

    def _unkey(self, raw: str) -> str:
        return _unb64(raw).decode()[len(self.namespace) :]

    def _entry(self, kv: JSON) -> Entry:
        return Entry(self._unkey(kv["key"]), _unb64(kv.get("value", "")), int(kv["mod_revision"]))

    # --- transport -----------------------------------------------------------------------
    async def _post(self, path: str, body: JSON, *, idempotent: bool) -> JSON:
        """POST to the first endpoint that answers; ManagerUnavailable when none does."""
        if self._tls is not None:
            context = self._tls.client_context()  # a new object when the files changed
            if context is not self._tls_context:
                if self._client is not None:  # requests may still run on it: close at the end
                    self._retired.append(self._client)
                self._client = httpx.AsyncClient(timeout=self._timeout, verify=context)
                self._tls_context = context
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        failures: list[str] = []
        n = len(self.endpoints)
        for i in range(n):
            index = (self._current + i) % n
            endpoint = self.endpoints[index]
            try:
                answer = await self._post_one(endpoint, path, body, idempotent)
            except _Unsent as e:
                failures.append(f"{endpoint}: {e}")
                continue
            self._current = index
            return answer
        raise ManagerUnavailable("etcd unreachable: " + "; ".join(failures))

    async def _post_one(self, endpoint: str, path: str, body: JSON, idempotent: bool) -> JSON:
        assert self._client is not None
        try:
            r = await self._client.post(endpoint + path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise _Unsent(f"{type(e).__name__}: {e}") from e
        except httpx.TransportError as e:
            if idempotent:
                raise _Unsent(f"{type(e).__name__}: {e}") from e
            raise ManagerUnavailable(
                f"etcd unreachable: {endpoint}{path}: {type(e).__name__}: {e} "
                "(the write may or may not have been applied)"
            ) from e
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        error = answer.get("error")
        if r.status_code == 200 and not isinstance(error, dict):
            return answer
        # unary errors: {"error": "...", "code": N, "message": "..."}; streaming ones (the
        # lease keepalive): {"error": {"grpc_code": N, "message": "..."}} with status 200
        if isinstance(error, dict):
            code, message = error.get("grpc_code", 0), error.get("message", "")
        else:
            code, message = answer.get("code", 0), answer.get("message", r.text[:200])
        if code == GRPC_UNAVAILABLE or r.status_code >= 500:
            if idempotent:
                raise _Unsent(f"HTTP {r.status_code}: {message}")
            raise ManagerUnavailable(f"etcd unavailable: {endpoint}{path}: {message}")
        if code == GRPC_NOT_FOUND:
            raise NotFound(f"etcd: {message}")
        if code == GRPC_INVALID_ARGUMENT:
            raise InvalidArgument(f"etcd: {message}")
        raise CargoholdError(f"etcd: {endpoint}{path}: HTTP {r.status_code}: {message}")

    # --- records -------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        r = await self._post("/v3/kv/range", {"key": _b64(self._key(key))}, idempotent=True)
        kvs = r.get("kvs", [])
        return self._entry(kvs[0]) if kvs else None

    async def range(self, prefix: str) -> list[Entry]:
        start = self._key(prefix or "/") if self.namespace else prefix.encode() or b"\0"
        body = {
            "key": _b64(start),
            "range_end": _b64(prefix_end(start)),
            "sort_order": "ASCEND",
            "sort_target": "KEY",
        }
        r = await self._post("/v3/kv/range", body, idempotent=True)
        return [self._entry(kv) for kv in r.get("kvs", [])]

    async def put(self, key: str, value: bytes) -> int:
        body = {"key": _b64(self._key(key)), "value": _b64(value)}
        r = await self._post("/v3/kv/put", body, idempotent=False)
        return int(r["header"]["revision"])

    async def delete(self, key: str) -> bool:
        body = {"key": _b64(self._key(key))}
        r = await self._post("/v3/kv/deleterange", body, idempotent=False)
        return int(r.get("deleted", 0)) > 0

    def _compare(self, c: Compare) -> JSON:
        key = _b64(self._key(c.key))
        if c.mod_revision == 0:  # "absent" is a create revision of 0 in etcd
            return {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        return {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": c.mod_revision}

    def _op(self, op: Put | Delete) -> JSON:
        if isinstance(op, Put):
            return {"request_put": {"key": _b64(self._key(op.key)), "value": _b64(op.value)}}
        return {"request_delete_range": {"key": _b64(self._key(op.key))}}

    async def txn(self, compares: list[Compare], ops: list[Put | Delete]) -> bool:
        check_ops(ops)
        body = {
            "compare": [self._compare(c) for c in compares],
            "success": [self._op(op) for op in ops],
            "failure": [],
        }
        r = await self._post("/v3/kv/txn", body, idempotent=False)
        return bool(r.get("succeeded", False))

    # --- leadership ----------------------------------------------------------------------
    async def _live_lease(self, role: str, holder: str, ttl: float) -> int:
        """The holder's lease for ``role``, kept alive; a new one if it expired."""
        lease = self._leases.get((role, holder))
        if lease is not None:
            r = await self._post("/v3/lease/keepalive", {"ID": str(lease)}, idempotent=True)
            if int(r.get("result", r).get("TTL", 0)) > 0:
                return lease
            self._leases.pop((role, holder), None)  # expired: its key is gone with it
        r = await self._post("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))}, idempotent=True)
        lease = int(r["ID"])
        self._leases[(role, holder)] = lease
        return lease

    async def campaign(self, role: str, holder: str, ttl: float) -> bool:
        key = _b64(self._key(f"/leader/{role}"))
        value = _b64(holder.encode())
        async with self._campaign_lock:
            lease = await self._live_lease(role, holder, ttl)
            r = await self._post(
                "/v3/kv/txn",
                {
                    "compare": [
                        {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                    ],
                    "success": [{"request_put": {"key": key, "value": value, "lease": str(lease)}}],
                    "failure": [{"request_range": {"key": key}}],
                },
                idempotent=False,
            )
            if r.get("succeeded"):
                return True
            kvs = r["responses"][0]["response_range"].get("kvs", [])
            if not kvs or _unb64(kvs[0].get("value", "")) != holder.encode():
                return False  # someone else leads (or the key just expired: next time)
            if int(kvs[0].get("lease", 0)) == lease:
                return True
            # Ours by name but on a lease we do not hold (this holder before a restart):
            # move it to our lease, unless it changed meanwhile.
            r = await self._post(
                "/v3/kv/txn",
                {
                    "compare": [
                        {
                            "key": key,
                            "target": "MOD",
                            "result": "EQUAL",
                            "mod_revision": int(kvs[0]["mod_revision"]),
                        }
                    ],
                    "success": [{"request_put": {"key": key, "value": value, "lease": str(lease)}}],
                    "failure": [],
                },
                idempotent=False,
            )
            return bool(r.get("succeeded", False))

    async def resign(self, role: str, holder: str) -> None:
        key = _b64(self._key(f"/leader/{role}"))
        async with self._campaign_lock:
            lease = self._leases.pop((role, holder), None)
            if lease is not None:
                try:  # revoking deletes the key attached to it
                    await self._post("/v3/lease/revoke", {"ID": str(lease)}, idempotent=True)
                except NotFound:
                    pass  # expired already
            # the key may still name us on a lease we do not know (before a restart)
            await self._post(
                "/v3/kv/txn",
                {
                    "compare": [
                        {
                            "key": key,
                            "target": "VALUE",
                            "result": "EQUAL",
                            "value": _b64(holder.encode()),
                        }
                    ],
                    "success": [{"request_delete_range": {"key": key}}],
                    "failure": [],
                },
                idempotent=False,
            )

    async def leader(self, role: str) -> str | None:
        e = await self.get(f"/leader/{role}")
        return None if e is None else e.value.decode()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        retired, self._retired = self._retired, []
        for old in retired:
            await old.aclose()
