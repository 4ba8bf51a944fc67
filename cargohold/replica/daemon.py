"""The replica server as a process (``cargohold replica-server``, started by the node agent):
one process serving every replica on the node's disks, or a parent and ``workers`` forked
processes with the replicas sharded by id (``replica/workers.py``). Runs on uvloop until
SIGTERM/SIGINT, then closes cleanly (``ReplicaServer.stop``: flushes finish, every replica
is flushed and marked clean).

Signals, event loops, memory tuning (``memtune``), the listening sockets of the parent,
forking and restarting workers all live here; ``server.py`` is the server inside one event
loop, ``workers.py`` the parent's dispatching. Logging is set up by the caller
(``cargohold.logs``) before ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

from cargohold import memtune
from cargohold.replica.server import ReplicaServer
from cargohold.replica.session import Session
from cargohold.replica.workers import READY, Dispatcher, owner
from cargohold.security.tls import credentials_or_plaintext
from cargohold.settings import ReplicaServerSettings

log = logging.getLogger("cargohold.replica")


def run(settings: ReplicaServerSettings) -> None:
    """Run the server until SIGTERM/SIGINT (uvloop when available)."""
    memtune.tune_malloc()
    if settings.workers > 1:
        import uvloop

        uvloop.run(_parent_main(settings))
        return
    try:
        import uvloop

        uvloop.run(serve(settings))
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(serve(settings))


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# --- one process ---------------------------------------------------------------------------


async def serve(settings: ReplicaServerSettings, ready_fd: int | None = None) -> None:
    server = ReplicaServer(settings)
    server.registry.recover_crashed()  # before it listens: an engine's OPEN would time out
    await server.start()
    stop = _stop_on_signals()
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


# --- a worker process ----------------------------------------------------------------------


async def _worker_main(settings: ReplicaServerSettings, index: int, channel: socket.socket) -> None:
    n = settings.workers
    server = ReplicaServer(settings, owns=lambda rid: owner(rid, n) == index)
    server.registry.recover_crashed()  # before it takes connections (see ``serve``)
    loop = asyncio.get_running_loop()
    stop = _stop_on_signals()
    with contextlib.suppress(OSError):  # the parent listens once every worker said so
        channel.send(READY)
    channel.setblocking(False)
    adopting: set[asyncio.Task] = set()

    def adopt() -> None:
        try:
            _, fds, _, _ = socket.recv_fds(channel, 1, 4)
        except BlockingIOError:
            return
        except OSError:
            stop.set()
            return
        if not fds:  # the parent is gone
            stop.set()
            return
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            tls = server.tls_args() if sock.family != socket.AF_UNIX else {}
            task = loop.create_task(
                loop.connect_accepted_socket(lambda: Session(server), sock, **tls)
            )
            adopting.add(task)
            task.add_done_callback(adopted)

    def adopted(task: asyncio.Task) -> None:
        """A handed-over connection whose TLS handshake failed (a certificate refused, the
        peer gone) is the peer's problem, as it is for a single-process server: noted at
        debug level, never left as an unretrieved exception with a traceback in the log."""
        adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug(
                "worker %d: a connection failed at its handshake: %r", index, task.exception()
            )

    loop.add_reader(channel.fileno(), adopt)
    await stop.wait()
    loop.remove_reader(channel.fileno())
    await server.stop()


def _run_worker(settings: ReplicaServerSettings, index: int, channel: socket.socket) -> None:
    """A forked worker's whole life: serve, then exit without running the parent's code."""
    import uvloop

    os.environ["CARGOHOLD_WORKER"] = str(index)
    try:
        uvloop.run(_worker_main(settings, index, channel))
    finally:
        os._exit(0)


# --- the parent of the workers -------------------------------------------------------------


def _listen(settings: ReplicaServerSettings) -> list[socket.socket]:
    """The parent's listening sockets: TCP, and the unix socket if asked (mode 0600)."""
    tcp = socket.create_server((settings.host, settings.port), backlog=1024, reuse_port=False)
    tcp.setblocking(False)
    listeners = [tcp]
    if settings.unix_socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(settings.unix_socket)
        us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # mode 0600: the server's own user only (docs/security.md)
        try:
            us.bind(settings.unix_socket)
        finally:
            os.umask(old)
        os.chmod(settings.unix_socket, 0o600)
        us.listen(1024)
        us.setblocking(False)
        listeners.append(us)
    return listeners


async def _parent_main(settings: ReplicaServerSettings) -> None:
    # the credentials load (or --plaintext is announced) before any worker is forked
    credentials_or_plaintext(settings.tls_dir, settings.plaintext, "the replica server")
    parent = Dispatcher(settings, lambda index, channel: _run_worker(settings, index, channel))
    loop = asyncio.get_running_loop()
    stop = _stop_on_signals()
    for i in range(settings.workers):
        parent.spawn(i)
    # the workers recover their replicas after a machine crash first; the parent listens
    # only then, as a single process does (``serve``): no connection waits unserved, an
    # engine's OPEN finds nothing listening and the agent waits on the recovery's log lines
    while not parent.all_ready() and not stop.is_set():
        parent.reap()
        await asyncio.sleep(0.05)
    listeners = []
    if not stop.is_set():
        listeners = _listen(settings)
    for ls in listeners:
        loop.add_reader(ls.fileno(), parent.accept, ls)

    async def supervise() -> None:  # uvloop keeps SIGCHLD for itself: poll instead
        while not stop.is_set():
            parent.reap()
            parent.expire()
            await asyncio.sleep(0.2)

    supervisor = loop.create_task(supervise())
    port = listeners[0].getsockname()[1] if listeners else settings.port
    where = f"{settings.host}:{port}" + (
        f" and {settings.unix_socket}" if settings.unix_socket else ""
    )
    if listeners:
        print(
            f"replica server listening on {where} (node {settings.node}, {settings.workers} "
            f"workers, disks {', '.join(parent.registry.disks)})",
            flush=True,
        )
    await stop.wait()
    supervisor.cancel()
    for ls in listeners:
        loop.remove_reader(ls.fileno())
        ls.close()
    for pid in parent.pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for pid in parent.pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            await asyncio.sleep(0.05)
    if settings.unix_socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(settings.unix_socket)
