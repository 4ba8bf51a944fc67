"""The replica server: one per node, serving every replica on the node's disks.

An asyncio server on uvloop, listening on TCP (and optionally a unix socket), one
``Session`` per connection. Started by ``cargohold replica-server`` (and, later, by the node
agent). SIGTERM or SIGINT closes it cleanly: listeners stop, in-flight flushes finish,
every replica is flushed and marked clean.

With ``workers > 1`` the node's replicas are sharded over that many processes by a hash of
the replica id; see ``workers``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys

from cargohold import memtune
from cargohold.replica.admission import Admission
from cargohold.replica.registry import Registry
from cargohold.replica.session import Session
from cargohold.settings import ReplicaServerSettings

log = logging.getLogger("cargohold.replica")


class ReplicaServer:
    def __init__(self, settings: ReplicaServerSettings, owns=None) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.registry = Registry(settings.disks, owns)
        self.sessions: set[Session] = set()
        self.admission = Admission(settings)
        self.counters: collections.Counter[str] = collections.Counter()
        self._servers: list[asyncio.base_events.Server] = []
        self.port = settings.port

    async def start(self, sock=None) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        if sock is not None:
            srv = await loop.create_server(lambda: Session(self), sock=sock, backlog=1024)
        else:
            srv = await loop.create_server(
                lambda: Session(self),
                self.settings.host,
                self.settings.port,
                reuse_address=True,
                backlog=1024,
            )
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        if self.settings.unix_socket:
            path = self.settings.unix_socket
            if os.path.exists(path):
                os.unlink(path)
            self._servers.append(await loop.create_unix_server(lambda: Session(self), path))

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


async def serve(settings: ReplicaServerSettings, ready_fd: int | None = None) -> None:
    server = ReplicaServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    where = f"{settings.host}:{server.port}"
    if settings.unix_socket:
        where += f" and {settings.unix_socket}"
    print(
        f"replica server listening on {where} (node {settings.node}, disks "
        f"{', '.join(server.registry.disks)})",
        flush=True,
    )
    memtune.freeze_gc()
    adm = server.admission
    # low RSS when idle, also after a flood of connections that sent no request
    idle = memtune.IdleTrim(lambda: server.counters["requests"] + adm.accepted + adm.refused)
    idle.start()
    log.info(
        "accepting at most %d connections (%d of them for this node: %s), %d per address",
        adm.limit,
        adm.reserve,
        ", ".join(sorted(adm.trusted)),
        settings.max_connections_per_address,
    )
    await stop.wait()
    log.info("shutting down")
    idle.stop()
    await server.stop()


def run(settings: ReplicaServerSettings) -> None:
    """Run the server until SIGTERM/SIGINT (uvloop when available)."""
    logging.basicConfig(
        level=os.environ.get("CARGOHOLD_LOG", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    memtune.tune_malloc()
    if settings.workers > 1:
        from cargohold.replica.workers import run_workers

        run_workers(settings)
        return
    try:
        import uvloop

        uvloop.run(serve(settings))
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(serve(settings))
