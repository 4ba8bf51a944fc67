"""One NBD client's connection: the asyncio (uvloop) shell around the sans-I/O codec.

``NBDConnection`` is the asyncio protocol the server (``nbd_server.py``) makes per accepted
socket. It feeds received bytes to ``protocol.nbd.ServerConnection`` and acts on its events.

Option phase (the handshake): the greeting goes out on connect; the codec's replies to the
client's options are written as they come; the client must reach ``nbd.Ready`` (NBD_OPT_GO
or EXPORT_NAME) within ``handshake_timeout``, else it is closed. Everything negotiated
before transmission belongs here, and so does the STARTTLS upgrade of a network endpoint
(``_upgrade``: after the ACK, ``loop.start_tls`` with the server's credentials, then the
peer's identity is put to the server's ``authorize``; a peer it refuses gets
NBD_REP_ERR_POLICY for every option, a failed handshake loses its connection).

Transmission phase: each request runs as a task of its own (``nbd_transmission.py`` says
what each command does to the device); aligned reads the device can answer at once are
answered inline, and aligned writes the device can start at once (``write_nowait``) are
answered from its callback, without a task. The replies finished in one pass of the event
loop go out together, with one ``writelines`` (read data is never copied). Reading pauses while the connection's
write buffer is high or ``MAX_INFLIGHT`` requests are in flight.

QoS (``qos_gate.py``): when the volume has limits, each request is offered to the
server's gate before it is taken up; one it queues is started later (``admitted``), and
the connection stops reading while ``QUEUE_PER_CONNECTION`` of its requests wait there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from cargohold.errors import PermissionDenied, ProtocolError, Unauthenticated
from cargohold.frontend.nbd_transmission import Transmission
from cargohold.frontend.qos_gate import QUEUE_PER_CONNECTION
from cargohold.protocol import nbd
from cargohold.security.tls import Credentials, peer_identity

Buffer = bytes | bytearray | memoryview  # one buffer of a reply, as the codec makes them

if TYPE_CHECKING:
    from cargohold.frontend.nbd_server import NBDServer

log = logging.getLogger("cargohold.nbd")

MAX_INFLIGHT = 256  # requests per connection before we stop reading from it
WRITE_HIGH = 8 * 1024 * 1024  # write buffer marks of each transport
WRITE_LOW = 1024 * 1024


class NBDConnection(Transmission, asyncio.BufferedProtocol):
    """One client: the codec, its transport, and the requests it has in flight."""

    def __init__(self, server: NBDServer, tls: Credentials | None = None) -> None:
        self.server = server
        self.device = server.device
        self.tls = tls  # a network endpoint: TLS required (FORCEDTLS), with these credentials
        self.codec = nbd.ServerConnection(
            server.export, lambda: self.device.size, tls_required=tls is not None
        )
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.address = "?"  # the client's address without its port: the per-address limit
        self.counted = False  # in the server's connections and per-address counts
        self.started = self.last_active = 0.0  # loop time: connected, last bytes or reply
        self.tasks: set[asyncio.Task[None]] = set()
        self.queued = 0  # requests waiting in the QoS gate (qos_gate.py)
        self.ready: nbd.Ready | None = None
        self._closing_after_drain = False
        self._write_paused = False
        self._reading_paused = False
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[Buffer] = []  # replies of this pass of the event loop, sent together
        # aligned reads the device can answer at once (BlockDevice.read_now): no task
        self._read_now: Callable[[int, int], Buffer | None] | None = getattr(
            self.device, "read_now", None
        )
        # aligned writes the device can start without a task (BlockDevice.write_nowait)
        self._write_nowait: Callable[..., bool] | None = getattr(self.device, "write_nowait", None)
        self.now_writes = 0  # of those, in flight
        # set in connection_made: asyncio.get_running_loop() costs a getpid() system call
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        """Requests taken up and not answered yet (tasks and writes without one)."""
        return len(self.tasks) + self.now_writes

    # --- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is no subclass of asyncio.Transport, but has its methods)
        transport = self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer or "unix")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
        loop = self._loop = asyncio.get_running_loop()
        self.started = self.last_active = loop.time()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.server.admit(self):
            transport.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        transport.write(self.codec.greeting())
        self._timer = loop.call_later(
            self.server.settings.handshake_timeout, self._handshake_timeout
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None

    # received with readinto (a large write lands in a buffer of its own: no copy, no join)
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.codec.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._received(lambda: self.codec.buffer_updated(nbytes))

    def data_received(self, data: bytes) -> None:
        self._received(lambda: self.codec.feed(data))

    def _received(self, decode: Callable[[], list]) -> None:
        assert self._loop is not None
        self.last_active = self._loop.time()
        try:
            events = decode()
        except ProtocolError as e:
            log.warning("NBD client %s broke the protocol, closing: %s", self.peer, e)
            self.abort()
            return
        if self.ready is None and self.transport is not None:
            out = self.codec.data_to_send()
            if out:
                self.transport.write(out)
        now: list = []  # replies made in this call
        read_now = self._read_now if self.ready is not None else None
        write_nowait = self._write_nowait if self.ready is not None else None
        bs = self.device.block_size
        gate = self.server.qos
        limited = gate.limited
        for ev in events:
            if type(ev) is nbd.Request:
                if limited and not gate.offer(self, ev):
                    continue  # queued: started by ``admitted`` when its tokens are there
                if (
                    read_now is not None
                    and ev.cmd == nbd.CMD_READ
                    and not (ev.offset | ev.length) % bs
                ):
                    data = read_now(ev.offset, ev.length)
                    if data is not None:
                        self.server.requests += 1
                        now += self.codec.reply_read(ev.handle, ev.offset, data)
                        continue
                elif (
                    write_nowait is not None
                    and ev.cmd == nbd.CMD_WRITE
                    and not (ev.offset | ev.length) % bs
                    and self._write_now(ev, write_nowait)
                ):
                    self.server.requests += 1
                    if self.in_flight >= MAX_INFLIGHT:
                        self._update_reading()
                    continue
                self._spawn(ev)
            elif type(ev) is nbd.Invalid:
                self._send(self.codec.reply_error(ev.handle, ev.errno, ev.message))
            elif type(ev) is nbd.Ready:
                self.ready = ev
                if self._timer is not None:
                    self._timer.cancel()
            elif type(ev) is nbd.Disconnect or type(ev) is nbd.Aborted:
                self._close_when_idle()
            elif type(ev) is nbd.StartTLS:
                self._start_tls()
        if limited and self.queued >= QUEUE_PER_CONNECTION:
            self._update_reading()
        if now:
            if self._out:  # a batch is going out at the end of this pass: join it
                self._out += now
            elif self.transport is not None and not self.transport.is_closing():
                self.transport.writelines(now)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def eof_received(self) -> bool | None:
        self._close_when_idle()
        # keep the write side open until the replies are out (TLS has no half-close)
        return None if self.codec.tls else True

    # --- STARTTLS (option phase) ------------------------------------------------------------
    def _start_tls(self) -> None:
        """The ACK is written: read nothing more in clear, upgrade in a task."""
        assert self.transport is not None and self.tls is not None
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._upgrade(self.transport, self.tls))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _upgrade(self, raw: asyncio.Transport, creds: Credentials) -> None:
        """TLS 1.3 with a client certificate, then the peer's identity is authorized."""
        srv = self.server
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw,
                self,
                creds.server_context(),
                server_side=True,
                ssl_handshake_timeout=srv.settings.handshake_timeout,
            )
        except (OSError, ssl.SSLError, EOFError, TimeoutError) as e:
            srv.tls_failed += 1
            log.warning("NBD client %s: TLS handshake failed: %s", self.peer, e or type(e).__name__)
            srv.forget(self)
            raw.abort()
            self.transport = None
            return
        if tls is None:  # the connection went away during the handshake
            srv.forget(self)
            return
        self.transport = tls
        tls.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.codec.tls_started()
        ident = peer_identity(tls)
        try:
            if srv.authorize is not None:
                srv.authorize(ident)
        except (Unauthenticated, PermissionDenied) as e:
            srv.unauthorized += 1
            log.warning("NBD client %s (%s) refused: %s", self.peer, ident or "no identity", e)
            self.codec.deny(str(e))
        else:
            log.info("NBD client %s is %s (TLS)", self.peer, ident)

    # --- flow control -----------------------------------------------------------------------
    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        want_pause = (
            self._stopped
            or self._write_paused
            or self.in_flight >= MAX_INFLIGHT
            or self.queued >= QUEUE_PER_CONNECTION
        )
        if want_pause and not self._reading_paused:
            t.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            t.resume_reading()
            self._reading_paused = False

    def stop_reading(self) -> None:
        self._stopped = True
        self._update_reading()

    def _handshake_timeout(self) -> None:
        if self.ready is None:
            log.info(
                "NBD client %s did not finish the handshake in %g s: closing",
                self.peer,
                self.server.settings.handshake_timeout,
            )
            self.server.evicted += 1
            self.server.forget(self)
            self.abort()

    def evict(self, why: str) -> None:
        """Close this connection to make room (or because it idled too long): it stops
        counting against the limits at once."""
        log.info("closing NBD connection from %s: %s", self.peer, why)
        self.server.evicted += 1
        self.server.forget(self)
        self.abort()

    def _close_when_idle(self) -> None:
        self._closing_after_drain = True
        if not self.in_flight and not self.queued:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        self._out = []
        if self.transport is not None:
            self.transport.abort()

    def _send(self, buffers: list) -> None:
        """Send a reply. The only request in flight is answered at once (no added latency
        at queue depth 1); with others in flight, every reply of this pass of the event
        loop goes out with one ``writelines`` (one system call) at its end."""
        if not self._out:
            if self.in_flight <= 1:
                t = self.transport
                if t is not None and not t.is_closing():
                    t.writelines(buffers)
                return
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        self._out += buffers

    def _flush(self) -> None:
        out, self._out = self._out, []
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.writelines(out)

    # --- requests ------------------------------------------------------------------------------
    def admitted(self, req: nbd.Request) -> None:
        """The QoS gate lets a queued request go: start it; read again if it was full."""
        self._spawn(req)
        if self._reading_paused:
            self._update_reading()

    def gone(self) -> bool:
        """The connection is closed (the gate drops its queued requests)."""
        return self.transport is None or self.transport.is_closing()

    def _spawn(self, req: nbd.Request) -> None:
        self.server.requests += 1
        task = asyncio.get_running_loop().create_task(self._run(req))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if self.in_flight >= MAX_INFLIGHT:
            self._update_reading()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._finished()

    def _finished_now(self) -> None:
        """A write without a task was answered (``Transmission._write_now``)."""
        self.now_writes -= 1
        self._finished()

    def _finished(self) -> None:
        if not self.in_flight:
            assert self._loop is not None
            self.last_active = self._loop.time()
        if self._reading_paused:
            self._update_reading()
        if self._closing_after_drain and not self.in_flight and not self.queued:
            self.close()
