"""The replica server: one per node, serving every replica on the node's disks.

An asyncio server, listening on TCP (and optionally a unix socket), one ``Session`` per
connection. The TCP socket speaks TLS 1.3 with client certificates (``settings.tls_dir``)
and every request is authorized by the peer's identity (``session.py``); plain TCP only
with ``settings.plaintext``. The unix socket stays plain: it is made mode 0600, so only the
server's own user (root, or the agent's) can connect, and is served as the agent would be
(docs/security.md). ``stop`` closes it cleanly: listeners stop, in-flight flushes finish, every
replica is flushed and marked clean. The process around it (``cargohold replica-server``,
started by the node agent: signals, uvloop, memory tuning, and the worker processes when
``workers > 1``) is ``replica/daemon.py``; tests run ``ReplicaServer`` in their own loop.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
from collections.abc import Callable
from typing import Any

from cargohold.replica.admission import Admission
from cargohold.replica.registry import Registry
from cargohold.replica.session import Session
from cargohold.security.tls import Credentials, credentials_or_plaintext
from cargohold.settings import ReplicaServerSettings


class ReplicaServer:
    def __init__(
        self, settings: ReplicaServerSettings, owns: Callable[[str], bool] | None = None
    ) -> None:
        self.settings = settings
        self.registry = Registry(settings.disks, owns, settings.store_write_chunk)
        self.sessions: set[Session] = set()
        self.admission = Admission(settings)
        self.counters: collections.Counter[str] = collections.Counter()
        self._servers: list[asyncio.base_events.Server] = []
        self.port = settings.port
        self.creds: Credentials | None = credentials_or_plaintext(
            settings.tls_dir, settings.plaintext, f"the replica server of node {settings.node}"
        )
        # the cluster our certificate is of: peers of another cluster are refused
        self.cluster: str | None = self.creds.cluster() if self.creds else None

    def tls_args(self) -> dict[str, Any]:
        """``ssl`` and, with it, a handshake that must end within first_request_timeout
        (admission counts a connection from its end on: a slow one must not linger)."""
        if self.creds is None:
            return {}
        return {
            "ssl": self.creds.server_context(),
            "ssl_handshake_timeout": self.settings.first_request_timeout,
        }

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        if sock is not None:
            srv = await loop.create_server(
                lambda: Session(self), sock=sock, backlog=1024, **self.tls_args()
            )
        else:
            srv = await loop.create_server(
                lambda: Session(self),
                self.settings.host,
                self.settings.port,
                reuse_address=True,
                backlog=1024,
                **self.tls_args(),
            )
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        if self.settings.unix_socket:
            path = self.settings.unix_socket
            if os.path.exists(path):
                os.unlink(path)
            old = os.umask(0o177)  # mode 0600 from the start: no window for others
            try:
                self._servers.append(await loop.create_unix_server(lambda: Session(self), path))
            finally:
                os.umask(old)
            os.chmod(path, 0o600)

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        # long operations (snapshot merges, scrubs) stop at their next step, before any
        # replica is closed under them; what they did so far is consistent on disk
        tasks = [t for s in list(self.sessions) for t in s._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in list(self.sessions):
            if s.transport is not None:
                s.transport.close()
        for rep in list(self.registry.open.values()):
            await rep.flushes.drain()
        self.registry.close_all()
        if self.settings.unix_socket and os.path.exists(self.settings.unix_socket):
            os.unlink(self.settings.unix_socket)
