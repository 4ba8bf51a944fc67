"""The node's Prometheus scrape target: ``GET /metrics`` on the agent's metrics port.

One target per node (not per volume): at each scrape the agent asks each engine it runs for
a fresh ``status`` over its control socket (at most ``STATUS_TIMEOUT``; an engine that does
not answer in time shows the status of its last heartbeat), adds its replica server's
per-disk numbers (from the LIST of its last heartbeat) and each disk's filesystem usage
(statvfs), and renders them (cargohold/metrics/: engine_status, node_stats).

Who may scrape: over TLS (the default), a client certificate of the cluster's CA whose role
holds ``metrics:read`` (admin, operator, reader; docs/security.md): ``cargohold up`` issues
``reader/prometheus`` for its Prometheus. Anyone else gets 401/403 and nothing. With
``--plaintext`` (benchmarks) it serves plain HTTP to anyone, like the rest of the data path.
A tiny HTTP/1.1 server of its own (no framework): one request per connection, a request
head of at most ``MAX_HEAD`` bytes read within ``READ_TIMEOUT``, at most ``MAX_CONNECTIONS``
at once (more are closed at once): a flood cannot starve the node's agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from cargohold.security.identity import Identity
from cargohold.security.policy import Permission, allowed
from cargohold.security.tls import peer_identity

log = logging.getLogger("cargohold.agent")

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 8
STATUS_TIMEOUT = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsListener:
    """Serves ``render()`` (the exposition, bytes) at /metrics on ``host:port``.
    ``ssl_context``: None serves plain HTTP (--plaintext); else a client certificate is
    required and must carry ``metrics:read`` of ``cluster``."""

    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], Awaitable[bytes]],
        ssl_context: Callable[[], ssl.SSLContext] | None,
        cluster: Callable[[], str | None],
    ) -> None:
        self.host, self.port = host, port
        self._render = render
        self._ssl = ssl_context
        self._cluster = cluster
        self._server: asyncio.base_events.Server | None = None
        self._open = 0
        self.served = 0
        self.refused = 0

    async def start(self) -> None:
        ctx = self._ssl() if self._ssl is not None else None
        tls: dict[str, Any] = {"ssl": ctx, "ssl_handshake_timeout": READ_TIMEOUT} if ctx else {}
        self._server = await asyncio.start_server(self._serve, self.host, self.port, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "metrics on %s://%s:%d/metrics",
            "https" if ctx is not None else "http",
            self.host,
            self.port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self._open += 1
        try:
            await self._one(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # a bug here must never take the agent down
            log.exception("metrics request failed")
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _reply(writer, 431, b"request head too large\n")
            return
        if len(head) > MAX_HEAD:
            await _reply(writer, 431, b"request head too large\n")
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _reply(writer, 400, b"bad request line\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target != "/metrics":
            await _reply(writer, 404, b"only /metrics here\n")
            return
        if method not in ("GET", "HEAD"):
            await _reply(writer, 405, b"GET /metrics\n", extra=b"Allow: GET, HEAD\r\n")
            return
        if self._ssl is not None:
            why = self._refusal(peer_identity(writer.transport))
            if why is not None:
                self.refused += 1
                await _reply(writer, why[0], why[1].encode() + b"\n")
                return
        body = await self._render()
        self.served += 1
        await _reply(writer, 200, b"" if method == "HEAD" else body, CONTENT_TYPE, len(body))

    def _refusal(self, ident: Identity | None) -> tuple[int, str] | None:
        if ident is None:
            return 401, "present a client certificate of the cluster's CA"
        cluster = self._cluster()
        if cluster is not None and ident.cluster != cluster:
            return 401, f"a certificate of cluster {ident.cluster}, this is {cluster}"
        if not allowed(ident, Permission.METRICS_READ):
            return 403, f"{ident} may not read metrics (needs {Permission.METRICS_READ})"
        return None


async def _reply(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    length: int | None = None,
    extra: bytes = b"",
) -> None:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}.get(
        status, {404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
    )
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "Connection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )
    await writer.drain()


def disk_usage(path: str) -> tuple[int, int] | None:
    """(filesystem size, bytes free to us) of the filesystem ``path`` is on, or None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
