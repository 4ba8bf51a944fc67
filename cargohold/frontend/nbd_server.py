"""The NBD server: a thin asyncio (uvloop) shell around the sans-I/O codec ``protocol.nbd``.

Serves one BlockDevice (the engine's volume, or a ``LocalDevice``) on TCP (TCP_NODELAY) and
on a unix socket, to many clients at once (multi-conn). Called by ``cargohold nbd-serve``
and, later, by the engine. Per connection, pipelined requests run concurrently, one task
each; the replies finished in one pass of the event loop go out together, with one
``writelines`` (read data is never copied). Reading pauses while
the connection's write buffer is high or too many of its requests are in flight. A client
that breaks the protocol loses its own connection and nothing else.

Unaligned requests: a client that negotiated block sizes (NBD_INFO_BLOCK_SIZE in NBD_OPT_GO)
was told the minimum is 4 KiB, and the codec answers its unaligned requests with EINVAL.
Every other client was told the minimum is 1: its unaligned reads read the covering blocks,
and its unaligned writes, trims and zeroes read-modify-write the partial blocks while
holding an exclusive lock on the 4 KiB-aligned span (``SpanLocks``, shared by every
connection to the device; aligned writes take the span shared, so they never wait for
one another, only for a read-modify-write on the same blocks).

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
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import cast

from cargohold import memtune
from cargohold.errors import ProtocolError, RequestError, Unsupported
from cargohold.frontend.device import BlockDevice
from cargohold.protocol import nbd
from cargohold.replica.admission import SAMPLE, SampledSet
from cargohold.settings import NBDSettings

Buffer = bytes | bytearray | memoryview  # one buffer of a reply, as the codec makes them

log = logging.getLogger("cargohold.nbd")

MAX_INFLIGHT = 256  # requests per connection before we stop reading from it
WRITE_HIGH = 8 * 1024 * 1024  # write buffer marks of each transport
WRITE_LOW = 1024 * 1024
HANDSHAKE_EVICT_AFTER = 2.0  # at a limit, a handshake this old gives its place (real ones: ms)
REFUSAL_LOG_EVERY = 10.0  # seconds between two warnings about refused connections
NO_VICTIM_RECHECK = 0.1  # after no connection could make room, seconds before looking again
FAIR_IDLE_AFTER = 0.1  # at the total limit, busy addresses' connections idle this long go first
ZERO_CHUNK = 1024 * 1024
_ZEROES = bytes(ZERO_CHUNK)


class SpanLocks:
    """Byte-range locks over one device: exclusive for read-modify-write, shared for plain
    writes. The common case (nothing exclusive held) takes no scan and no await."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[int, int, bool]] = {}
        self._exclusive = 0
        self._next = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _conflicts(self, lo: int, hi: int, exclusive: bool) -> bool:
        if not exclusive and not self._exclusive:
            return False
        return any(a < hi and lo < b and (ex or exclusive) for a, b, ex in self._held.values())

    async def acquire(self, lo: int, hi: int, exclusive: bool) -> int:
        while self._conflicts(lo, hi, exclusive):
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
        token = self._next
        self._next += 1
        self._held[token] = (lo, hi, exclusive)
        self._exclusive += exclusive
        return token

    def release(self, token: int) -> None:
        _, _, exclusive = self._held.pop(token)
        self._exclusive -= exclusive
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    @property
    def held(self) -> int:
        return len(self._held)


class NBDServer:
    """Serves ``device`` over NBD until ``close``."""

    def __init__(
        self,
        device: BlockDevice,
        name: str = "",
        description: str = "",
        settings: NBDSettings | None = None,
    ) -> None:
        self.device = device
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
                and not c.tasks
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
                and not c.tasks
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
            if c.ready is not None and not c.tasks and now - c.last_active >= limit:
                c.evict(f"idle for {now - c.last_active:.0f} s (idle_timeout {limit:g} s)")
        if self.connections:
            self._schedule_sweep()

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: NBDConnection(self), host, port, backlog=512)
        self._servers.append(srv)
        addr = srv.sockets[0].getsockname()
        self.addresses.append(f"{addr[0]}:{addr[1]}")
        return addr[0], addr[1]

    async def listen_unix(self, path: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        srv = await loop.create_unix_server(lambda: NBDConnection(self), path, backlog=512)
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
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for c in conns:
            c.close()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        self._servers.clear()


class NBDConnection(asyncio.BufferedProtocol):
    """One client: the codec, its transport, and the requests it has in flight."""

    def __init__(self, server: NBDServer) -> None:
        self.server = server
        self.device = server.device
        self.codec = nbd.ServerConnection(server.export, lambda: self.device.size)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.address = "?"  # the client's address without its port: the per-address limit
        self.counted = False  # in the server's connections and per-address counts
        self.started = self.last_active = 0.0  # loop time: connected, last bytes or reply
        self.tasks: set[asyncio.Task[None]] = set()
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

    # --- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is no subclass of asyncio.Transport, but has its methods)
        transport = self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer or "unix")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
        loop = asyncio.get_running_loop()
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

    def _received(self, decode: Callable[[], list[nbd.Event]]) -> None:
        self.last_active = asyncio.get_running_loop().time()
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
        now: list[Buffer] = []  # replies made in this call
        read_now = self._read_now if self.ready is not None else None
        bs = self.device.block_size
        for ev in events:
            if type(ev) is nbd.Request:
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
                self._spawn(ev)
            elif type(ev) is nbd.Invalid:
                self._send(self.codec.reply_error(ev.handle, ev.errno, ev.message))
            elif type(ev) is nbd.Ready:
                self.ready = ev
                if self._timer is not None:
                    self._timer.cancel()
            elif type(ev) is nbd.Disconnect or type(ev) is nbd.Aborted:
                self._close_when_idle()
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
        return True  # keep the write side open until the replies are out

    # --- flow control -----------------------------------------------------------------------
    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        want_pause = self._stopped or self._write_paused or len(self.tasks) >= MAX_INFLIGHT
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
        if not self.tasks:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        self._out = []
        if self.transport is not None:
            self.transport.abort()

    def _send(self, buffers: Sequence[Buffer]) -> None:
        """Send a reply. The only request in flight is answered at once (no added latency
        at queue depth 1); with others in flight, every reply of this pass of the event
        loop goes out with one ``writelines`` (one system call) at its end."""
        if not self._out:
            if len(self.tasks) <= 1:
                t = self.transport
                if t is not None and not t.is_closing():
                    t.writelines(buffers)
                return
            asyncio.get_running_loop().call_soon(self._flush)
        self._out += buffers

    def _flush(self) -> None:
        out, self._out = self._out, []
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.writelines(out)

    # --- requests ------------------------------------------------------------------------------
    def _spawn(self, req: nbd.Request) -> None:
        self.server.requests += 1
        task = asyncio.get_running_loop().create_task(self._run(req))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        if len(self.tasks) >= MAX_INFLIGHT:
            self._update_reading()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.last_active = asyncio.get_running_loop().time()
        if self._reading_paused:
            self._update_reading()
        if self._closing_after_drain and not self.tasks:
            self.close()

    async def _run(self, req: nbd.Request) -> None:
        codec = self.codec
        try:
            out = await self._handle(req)
        except RequestError as e:
            out = codec.reply_error(req.handle, e.errno, str(e))
        except Exception as e:  # a bug must not take the connection or the server down
            log.exception("NBD %s failed", nbd.command_name(req.cmd))
            out = codec.reply_error(req.handle, 5, f"internal error: {e}")
        self._send(out)

    async def _handle(self, req: nbd.Request) -> Sequence[Buffer]:
        cmd, off, n = req.cmd, req.offset, req.length
        dev = self.device
        codec = self.codec
        bs = dev.block_size
        if cmd == nbd.CMD_READ:
            if not (off | n) % bs:
                return codec.reply_read(req.handle, off, await dev.read(off, n))
            lo, hi = _outward(off, n, bs)
            data = memoryview(await dev.read(lo, hi - lo))
            return codec.reply_read(req.handle, off, data[off - lo : off - lo + n])
        fua = bool(req.flags & nbd.CMD_FLAG_FUA)
        if cmd == nbd.CMD_WRITE:
            payload = req.data
            assert payload is not None
            if not (off | n) % bs:
                await self._locked(off, off + n, False, lambda: dev.write(off, payload, fua))
            else:
                await self._rmw_write(off, payload, fua)
        elif cmd == nbd.CMD_FLUSH:
            await dev.flush()
        elif cmd == nbd.CMD_WRITE_ZEROES:
            await self._write_zeroes(off, n, req.flags)
        elif cmd == nbd.CMD_TRIM:
            lo, hi = -(-off // bs) * bs, (off + n) // bs * bs  # only whole blocks: a hint
            if hi > lo:
                await self._locked(lo, hi, False, lambda: dev.trim(lo, hi - lo))
            if fua:
                await dev.flush()
        elif cmd == nbd.CMD_BLOCK_STATUS:
            return codec.reply_block_status(req.handle, await self._block_status(req))
        # CMD_CACHE: a hint; every read is served from the store anyway
        return codec.reply_ok(req.handle)

    async def _locked(
        self, lo: int, hi: int, exclusive: bool, fn: Callable[[], Awaitable[object]]
    ) -> None:
        locks = self.server.locks
        token = await locks.acquire(lo, hi, exclusive)
        try:
            await fn()
        finally:
            locks.release(token)

    async def _rmw_write(self, off: int, data: memoryview, fua: bool) -> None:
        """Unaligned write: merge the partial edge blocks with what they hold."""
        dev = self.device
        bs = dev.block_size
        n = len(data)
        lo, hi = _outward(off, n, bs)
        locks = self.server.locks
        token = await locks.acquire(lo, hi, True)
        try:
            buf = bytearray(hi - lo)
            if hi - lo == bs:
                buf[:] = await dev.read(lo, bs)
            else:
                if off != lo:
                    buf[:bs] = await dev.read(lo, bs)
                if off + n != hi:
                    buf[-bs:] = await dev.read(hi - bs, bs)
            buf[off - lo : off - lo + n] = data
            await dev.write(lo, memoryview(buf), fua)
        finally:
            locks.release(token)

    async def _write_zeroes(self, off: int, n: int, flags: int) -> None:
        dev = self.device
        bs = dev.block_size
        fua = bool(flags & nbd.CMD_FLAG_FUA)
        if flags & nbd.CMD_FLAG_NO_HOLE:
            if flags & nbd.CMD_FLAG_FAST_ZERO:
                raise Unsupported("zeroing without holes is not fast here")
            for pos in range(off, off + n, ZERO_CHUNK):  # per MiB, not per block
                chunk = memoryview(_ZEROES)[: min(ZERO_CHUNK, off + n - pos)]
                if (pos | len(chunk)) % bs:
                    await self._rmw_write(pos, chunk, fua)
                else:
                    write = functools.partial(dev.write, pos, chunk, fua)
                    await self._locked(pos, pos + len(chunk), False, write)
            return
        if not (off | n) % bs:
            await self._locked(off, off + n, False, lambda: dev.write_zeroes(off, n, fua))
            return
        lo, hi = -(-off // bs) * bs, (off + n) // bs * bs  # the whole blocks inside
        if hi <= lo:  # within one block, or two partial ones
            await self._rmw_write(off, memoryview(_ZEROES)[:n], fua)
            return
        if off < lo:
            await self._rmw_write(off, memoryview(_ZEROES)[: lo - off], fua)
        await self._locked(lo, hi, False, lambda: dev.write_zeroes(lo, hi - lo, fua))
        if off + n > hi:
            await self._rmw_write(hi, memoryview(_ZEROES)[: off + n - hi], fua)

    async def _block_status(self, req: nbd.Request) -> list[tuple[int, int]]:
        bs = self.device.block_size
        off, n = req.offset, req.length
        lo, hi = _outward(off, n, bs)
        runs = await self.device.block_status(lo, hi - lo)
        out: list[tuple[int, int]] = []
        skip = off - lo
        left = n
        for length, flags in runs:
            if skip:
                cut = min(skip, length)
                length -= cut
                skip -= cut
            length = min(length, left)
            if length <= 0:
                continue
            out.append((length, flags))
            left -= length
            if left == 0 or len(out) >= nbd.MAX_BLOCK_STATUS_EXTENTS:
                break
        if not out:  # the device said nothing we can use: "unknown" is always true
            out = [(n, 0)]
        if req.flags & nbd.CMD_FLAG_REQ_ONE:
            out = out[:1]
        return out


def _outward(off: int, n: int, bs: int) -> tuple[int, int]:
    """The block-aligned span covering [off, off + n)."""
    return off // bs * bs, -(-(off + n) // bs) * bs


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
) -> None:
    """Serve ``device`` until ``stop`` is set, then drain, close and flush the device.
    ``ready`` is called with the bound addresses (``HOST:PORT`` with the real port when
    ``port`` is 0, ``unix:PATH``) once the server listens."""
    server = NBDServer(device, name=name, description=description, settings=settings)
    if host is not None:
        await server.listen_tcp(host, port)
    if unix:
        await server.listen_unix(unix)
    if ready is not None:
        ready(list(server.addresses))
    print(f"nbd server listening on {' '.join(server.addresses)}", flush=True)
    # low RSS when idle, also after a flood of connections that sent no request
    idle = memtune.IdleTrim(lambda: server.requests + server.accepted + server.refused).start()
    stop = stop or asyncio.Event()
    await stop.wait()
    log.info("shutting down")
    idle.stop()
    await server.close()
    await device.flush()
