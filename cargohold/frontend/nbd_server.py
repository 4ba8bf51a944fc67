"""The NBD server: listens, admits connections within their limits, serves one device.

Serves one BlockDevice (the engine's volume, or a ``LocalDevice``) on TCP (TCP_NODELAY) and
on a unix socket, to many clients at once (multi-conn). Called by ``cargohold nbd-serve``
(``frontend/daemon.py``) and by the engine (``engine/daemon.py``). Each client is an
``NBDConnection`` (``nbd_connection.py``: the asyncio shell around the sans-I/O codec
``protocol.nbd``, the option phase and flow control); the requests of its transmission
phase run against the device in ``nbd_transmission.py``. A client that breaks the protocol
loses its own connection and nothing else.

Local by default, TLS on the network (docs/security.md, "The NBD endpoint"): the unix
socket (mode 0600) and a TCP listener without ``tls`` speak NBD in clear, for the consumer
on this node. A TCP listener with ``tls`` (``Credentials``) requires NBD_OPT_STARTTLS
before anything else (the spec's FORCEDTLS mode), TLS 1.3 with a client certificate of
the cluster's CA, and then ``authorize`` (a callable raising Unauthenticated or
PermissionDenied) must accept the certificate's identity. ``tls_failed`` and
``unauthorized`` count the clients turned away.

Bounded connections (``settings.NBDSettings``; docs/operations.md, "Connection limits"):
a client must finish the handshake within ``handshake_timeout``; at most
``max_connections_per_address`` connections come from one client address and
``max_connections`` in all. At a limit, a new client takes the place of a connection that
is wasting one — a handshake older than ``HANDSHAKE_EVICT_AFTER``; at the total limit, the
longest idle connection of an address holding at least two more connections than the
newcomer's (fair shares: a flood from many addresses cannot keep a new client out); else
the longest idle connection with nothing in flight, if idle for ``evict_idle_after`` —
and is refused only when there is none (one warning per ``REFUSAL_LOG_EVERY`` seconds
says how many). Idle
connections are otherwise kept (``idle_timeout`` 0): the kernel's NBD client keeps its
connections open, idle, for as long as the device is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable

from cargohold import memtune
from cargohold.frontend.device import BlockDevice
from cargohold.frontend.nbd_connection import NBDConnection
from cargohold.frontend.nbd_transmission import SpanLocks
from cargohold.frontend.qos_gate import QosGate
from cargohold.protocol import nbd
from cargohold.replica.admission import SAMPLE, SampledSet
from cargohold.security.identity import Identity
from cargohold.security.tls import Credentials
from cargohold.settings import NBDSettings

__all__ = ["NBDConnection", "NBDServer", "serve"]

log = logging.getLogger("cargohold.nbd")

HANDSHAKE_EVICT_AFTER = 2.0  # at a limit, a handshake this old gives its place (real ones: ms)
REFUSAL_LOG_EVERY = 10.0  # seconds between two warnings about refused connections
NO_VICTIM_RECHECK = 0.1  # after no connection could make room, seconds before looking again
FAIR_IDLE_AFTER = 0.1  # at the total limit, busy addresses' connections idle this long go first


class NBDServer:
    """Serves ``device`` over NBD until ``close``."""

    def __init__(
        self,
        device: BlockDevice,
        name: str = "",
        description: str = "",
        settings: NBDSettings | None = None,
        tls: Credentials | None = None,
        authorize: Callable[[Identity | None], object] | None = None,
        qos: QosGate | None = None,
    ) -> None:
        self.device = device
        self.qos = qos or QosGate()  # the volume's QoS limits (unlimited: never consulted)
        self.tls = tls  # TCP listeners require TLS with these credentials (module docstring)
        self.authorize = authorize  # raises Unauthenticated / PermissionDenied
        self.export = nbd.Export(
            name=name,
            description=description,
            read_only=device.read_only,
            multi_conn=device.can_multi_conn,
            min_block=device.block_size,
            preferred_block=device.block_size,
            growable=True,  # NAME+growable, for the CSI node's nbdfuse (protocol/nbd.py)
        )
        self.settings = settings or NBDSettings()
        self.locks = SpanLocks()
        self.connections: SampledSet[NBDConnection] = SampledSet()
        self.per_address: dict[str, set[NBDConnection]] = {}  # client address -> admitted
        self._servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []
        self.requests = 0  # requests received, on every connection
        self.accepted = 0  # connections admitted
        self.refused = 0  # connections refused at a limit
        self.evicted = 0  # connections closed to make room, or idle too long
        self.tls_failed = 0  # TLS handshakes that failed (no or a bad certificate)
        self.unauthorized = 0  # TLS peers whose identity may not use the export
        self._refused_unlogged = 0
        self._refusal_logged_at = -REFUSAL_LOG_EVERY
        self._sweeper: asyncio.TimerHandle | None = None
        self._none_until: dict[str, float] = {}  # address -> loop time: no victim till then
        self._none_shares: tuple[float, int] = (0.0, 0)  # the same, any address, share up

    # --- admission -------------------------------------------------------------------------
    def admit(self, conn: NBDConnection) -> bool:
        """Count ``conn`` in, making room at a limit if some connection wastes its place;
        False: refused (the caller closes it)."""
        s = self.settings
        addr = conn.address
        mine = len(self.per_address.get(addr, ()))
        if addr != "unix" and mine >= s.max_connections_per_address:
            victim = self._victim(addr)
            if victim is None:
                return self._refuse(conn, f"{mine} connections from {addr} (the limit)")
            victim.evict(f"a new connection from {addr}, at its limit, needs its place")
            mine -= 1
        if len(self.connections) >= s.max_connections:
            victim = self._victim(None, mine)
            if victim is None:
                return self._refuse(conn, f"{len(self.connections)} connections (the limit)")
            victim.evict(
                f"a new connection from {addr} needs its place (the server is at its limit)"
            )
        self.connections.add(conn)
        self.per_address.setdefault(addr, set()).add(conn)
        conn.counted = True
        self.accepted += 1
        if s.idle_timeout > 0 and self._sweeper is None:
            self._schedule_sweep()
        return True

    def clients(self) -> list[dict[str, str]]:
        """The clients past their handshake (using the export now), sorted: ``peer`` is
        the client's address (``unix`` on the unix socket), ``export`` the export's name.
        The engine's status lists them (``nbd_clients``): a detach refuses while any is
        connected (docs/operations.md, "Detaching a volume")."""
        found = [
            {"peer": c.address, "export": self.export.name}
            for c in self.connections
            if c.ready is not None
        ]
        return sorted(found, key=lambda x: (x["peer"], x["export"]))

    def forget(self, conn: NBDConnection) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self.connections.discard(conn)
        mates = self.per_address.get(conn.address)
        if mates is not None:
            mates.discard(conn)
            if not mates:
                del self.per_address[conn.address]

    def _victim(self, address: str | None, mine: int = 0) -> NBDConnection | None:
        """The connection that wastes its place most. Among ``address``'s connections (at
        its limit): its oldest handshake older than HANDSHAKE_EVICT_AFTER, else its longest
        idle connection idle for ``evict_idle_after``. Among all (at the total limit, for a
        newcomer whose address holds ``mine``): such a handshake, else — fair shares — the
        longest idle connection (FAIR_IDLE_AFTER, nothing in flight) of an address holding
        more than ``mine`` + 1, else the longest idle connection idle for
        ``evict_idle_after``: first among a random sample of SAMPLE connections (a flood's
        are most of them), then among all. After a search of all found none, None for
        NO_VICTIM_RECHECK seconds without searching: a flood of refused connections must
        not each cost a scan of every connection."""
        now = asyncio.get_running_loop().time()
        if address is not None:
            if self._none_until.get(address, 0.0) > now:
                return None
            handshake, idlest = self._search(self.per_address.get(address, ()), now)
            found = handshake or idlest
            if found is None:
                if len(self._none_until) > 1024:
                    self._none_until.clear()
                self._none_until[address] = now + NO_VICTIM_RECHECK
            return found
        sample = self.connections.sample(SAMPLE)
        handshake, idlest = self._search(sample, now)
        found = handshake or self._fair_share(sample, mine, now) or idlest
        if found is not None:
            return found
        until, share = self._none_shares
        if until > now and mine >= share:  # a larger share has fewer candidates
            return None
        handshake, idlest = self._search(self.connections, now)
        found = handshake or self._fair_share(self.connections, mine, now) or idlest
        if found is None:
            self._none_shares = (now + NO_VICTIM_RECHECK, mine)
        return found

    def _fair_share(
        self, among: Iterable[NBDConnection], mine: int, now: float
    ) -> NBDConnection | None:
        """The longest-idle connection (idle FAIR_IDLE_AFTER, nothing in flight) ``among``
        those of addresses holding at least two more connections than the newcomer's: busy
        addresses cannot keep a new client out, and a client alone on its address is never
        evicted for another one."""
        best: NBDConnection | None = None
        for c in among:
            if (
                c.address != "unix"
                and not c.in_flight
                and now - c.last_active >= FAIR_IDLE_AFTER
                and len(self.per_address.get(c.address, ())) > mine + 1
                and (best is None or c.last_active < best.last_active)
            ):
                best = c
        return best

    def _search(
        self, among: Iterable[NBDConnection], now: float
    ) -> tuple[NBDConnection | None, NBDConnection | None]:
        """(the oldest handshake older than HANDSHAKE_EVICT_AFTER, the longest idle
        connection idle for ``evict_idle_after`` with nothing in flight) ``among``."""
        oldest: NBDConnection | None = None
        idlest: NBDConnection | None = None
        evict_after = self.settings.evict_idle_after
        for c in among:
            if c.ready is None:
                if now - c.started >= HANDSHAKE_EVICT_AFTER and (
                    oldest is None or c.started < oldest.started
                ):
                    oldest = c
            elif (
                evict_after > 0
                and not c.in_flight
                and now - c.last_active >= evict_after
                and (idlest is None or c.last_active < idlest.last_active)
            ):
                idlest = c
        return oldest, idlest

    def _refuse(self, conn: NBDConnection, why: str) -> bool:
        self.refused += 1
        self._refused_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged_at >= REFUSAL_LOG_EVERY:
            log.warning(
                "refusing NBD connections: %s; %d refused since the last warning, %d in all "
                "(limits: %d per address, %d in all; CARGOHOLD_NBD_* settings)",
                why,
                self._refused_unlogged,
                self.refused,
                self.settings.max_connections_per_address,
                self.settings.max_connections,
            )
            self._refused_unlogged = 0
            self._refusal_logged_at = now
        return False

    def _schedule_sweep(self) -> None:
        every = min(5.0, max(0.05, self.settings.idle_timeout / 4))
        self._sweeper = asyncio.get_running_loop().call_later(every, self._sweep)

    def _sweep(self) -> None:
        """Close connections silent for ``idle_timeout`` with nothing in flight."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        limit = self.settings.idle_timeout
        for c in list(self.connections):
            if c.ready is not None and not c.in_flight and now - c.last_active >= limit:
                c.evict(f"idle for {now - c.last_active:.0f} s (idle_timeout {limit:g} s)")
        if self.connections:
            self._schedule_sweep()

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP: TLS required when the server has credentials (``tls``)."""
        loop = asyncio.get_running_loop()
        tls = self.tls
        srv = await loop.create_server(lambda: NBDConnection(self, tls), host, port, backlog=512)
        self._servers.append(srv)
        addr = srv.sockets[0].getsockname()
        self.addresses.append(f"{addr[0]}:{addr[1]}")
        return addr[0], addr[1]

    async def listen_unix(self, path: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        old = os.umask(0o177)  # mode 0600 from the start: only this node's root connects
        try:
            srv = await loop.create_unix_server(lambda: NBDConnection(self), path, backlog=512)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._servers.append(srv)
        self.addresses.append(f"unix:{path}")
        return path

    async def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish, close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for srv in self._servers:
            srv.close()
        conns = list(self.connections)
        for c in conns:
            c.stop_reading()
        pending = [t for c in conns for t in c.tasks]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        # writes in flight without a task (write_nowait): answered from callbacks
        while any(c.now_writes for c in conns) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for c in conns:
            c.close()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        self._servers.clear()


async def serve(
    device: BlockDevice,
    host: str | None = "127.0.0.1",
    port: int = 10809,
    unix: str | None = None,
    name: str = "",
    description: str = "",
    stop: asyncio.Event | None = None,
    ready: Callable[[list[str]], object] | None = None,
    settings: NBDSettings | None = None,
    tls: Credentials | None = None,
    authorize: Callable[[Identity | None], object] | None = None,
    started: Callable[[NBDServer], object] | None = None,
    qos: QosGate | None = None,
) -> None:
    """Serve ``device`` until ``stop`` is set, then drain, close and flush the device.
    ``ready`` is called with the bound addresses (``HOST:PORT`` with the real port when
    ``port`` is 0, ``unix:PATH``) once the server listens; ``started`` with the server
    itself (the engine reads its ``clients``). With ``tls`` the TCP listener
    requires TLS and ``authorize`` (module docstring); the unix socket stays local."""
    server = NBDServer(
        device,
        name=name,
        description=description,
        settings=settings,
        tls=tls,
        authorize=authorize,
        qos=qos,
    )
    if host is not None:
        await server.listen_tcp(host, port)
    if unix:
        await server.listen_unix(unix)
    if ready is not None:
        ready(list(server.addresses))
    if started is not None:
        started(server)
    mode = " (TCP: TLS required)" if tls is not None and host is not None else ""
    print(f"nbd server listening on {' '.join(server.addresses)}{mode}", flush=True)
    # low RSS when idle, also after a flood of connections that sent no request
    idle = memtune.IdleTrim(lambda: server.requests + server.accepted + server.refused).start()
    stop = stop or asyncio.Event()
    await stop.wait()
    log.info("shutting down")
    idle.stop()
    await server.close()
    await device.flush()
