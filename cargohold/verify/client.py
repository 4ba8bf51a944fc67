"""An asyncio NBD client over the sans-I/O codec ``cargohold.protocol.nbd_client``.

``Connection``: one socket (TCP with TCP_NODELAY, or unix), handshake with
``NBD_OPT_GO``, then pipelined READ / WRITE (optionally FUA) / FLUSH: any number of
requests in flight, replies matched by handle. ``Pool``: several connections to one
export, requests spread round-robin (the server should offer multi-conn when writes on
one connection are flushed on another; ``Pool.multi_conn`` says whether it does).

Failures: a request the server refuses raises ``NbdRequestFailed`` (with the wire
errno); a connection that drops, or a server that breaks the protocol, fails every
request in flight on it with ``NbdConnectionLost`` — whether those writes landed is
unknown. Used by the workload, the checker and the ``cargohold verify`` command.

URIs (the libnbd forms): ``nbd://HOST[:PORT][/NAME]`` (port 10809 by default) and
``nbd+unix:///NAME?socket=PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import itertools
import socket
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from cargohold.errors import CargoholdError, ConfigError, ProtocolError, RequestError
from cargohold.protocol.nbd_client import ClientConnection, Ready, Reply

DEFAULT_PORT = 10809
_ERRNO_NAMES = {
    1: "EPERM",
    5: "EIO",
    12: "ENOMEM",
    22: "EINVAL",
    28: "ENOSPC",
    75: "EOVERFLOW",
    95: "ENOTSUP",
    108: "ESHUTDOWN",
}


class NbdRequestFailed(RequestError):
    """The server answered a request with an error (``wire_errno``)."""

    def __init__(self, message: str, wire_errno: int) -> None:
        super().__init__(message, wire_errno=wire_errno)
        self.wire_errno = wire_errno


class NbdConnectionLost(CargoholdError):
    """The connection dropped (or was dropped for a protocol error) before the reply."""

    exit_code = 3


@dataclass(frozen=True, slots=True)
class Target:
    host: str = ""
    port: int = DEFAULT_PORT
    unix: str = ""
    name: str = ""

    def __str__(self) -> str:
        if self.unix:
            return f"nbd+unix:///{self.name}?socket={self.unix}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{self.name}"


def parse_uri(uri: str) -> Target:
    """``nbd://HOST[:PORT][/NAME]`` or ``nbd+unix:///NAME?socket=PATH``."""
    parts = urlsplit(uri)
    name = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if parts.scheme == "nbd":
        if not parts.hostname:
            raise ConfigError(f"{uri!r}: no host (expected nbd://HOST[:PORT][/NAME])")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as e:
            raise ConfigError(f"{uri!r}: {e}") from None
        return Target(host=parts.hostname, port=port, name=name)
    if parts.scheme == "nbd+unix":
        sock = parse_qs(parts.query).get("socket")
        if not sock:
            raise ConfigError(f"{uri!r}: no socket (expected nbd+unix:///NAME?socket=PATH)")
        return Target(unix=sock[0], name=name)
    raise ConfigError(f"{uri!r}: expected an nbd:// or nbd+unix:// URI")


def errno_name(code: int) -> str:
    return _ERRNO_NAMES.get(code) or _errno.errorcode.get(code, str(code))


class Connection(asyncio.Protocol):
    """One NBD connection. Create with ``await Connection.connect(target)``."""

    def __init__(self, export_name: str, structured: bool = True) -> None:
        self.codec = ClientConnection(export_name, structured)
        self.transport: asyncio.Transport | None = None
        self.ready: Ready | None = None
        self._ready_fut: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self._waiters: dict[int, asyncio.Future[Reply]] = {}
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.lost: BaseException | None = None

    @classmethod
    async def connect(
        cls, target: Target | str, structured: bool = True, timeout: float = 30.0
    ) -> Connection:
        if isinstance(target, str):
            target = parse_uri(target)
        loop = asyncio.get_running_loop()

        def factory() -> Connection:
            return cls(target.name, structured)

        try:
            async with asyncio.timeout(timeout):
                if target.unix:
                    _, proto = await loop.create_unix_connection(factory, target.unix)
                else:
                    _, proto = await loop.create_connection(factory, target.host, target.port)
                await proto._ready_fut
        except (OSError, TimeoutError) as e:
            raise NbdConnectionLost(f"cannot connect to {target}: {e}") from None
        return proto

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is no subclass of asyncio.Transport, but has its methods)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.codec.feed(data)
        except (ProtocolError, RequestError) as e:
            self._fail(e)
            return
        if self.ready is None and self.transport is not None:
            out = self.codec.data_to_send()
            if out:
                self.transport.write(out)
        for ev in events:
            if isinstance(ev, Ready):
                self.ready = ev
                if not self._ready_fut.done():
                    self._ready_fut.set_result(ev)
            else:
                fut = self._waiters.pop(ev.handle, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or NbdConnectionLost("the server closed the connection"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if isinstance(exc, NbdConnectionLost):
            lost = exc
        else:
            lost = NbdConnectionLost(f"connection dropped: {exc}")
        if not self._ready_fut.done():  # a refused handshake keeps its own error
            self._ready_fut.set_exception(exc if isinstance(exc, RequestError) else lost)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(lost)
        self._waiters.clear()
        self._can_write.set()
        if self.transport is not None:
            self.transport.abort()

    # --- requests ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.lost is not None

    async def _send(self, handle: int, buffers: list[Any]) -> Reply:
        if self.lost is not None:
            self.codec.in_flight.pop(handle, None)
            raise NbdConnectionLost(f"connection lost: {self.lost}")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters[handle] = fut
        assert self.transport is not None
        self.transport.writelines(buffers)
        if not self._can_write.is_set():
            await self._can_write.wait()
        reply = await fut
        if reply.error:
            name = errno_name(reply.error)
            msg = f": {reply.message}" if reply.message else ""
            raise NbdRequestFailed(f"{name}{msg}", reply.error)
        return reply

    async def read(self, offset: int, length: int) -> bytearray:
        handle, bufs = self.codec.read(offset, length)
        reply = await self._send(handle, bufs)
        assert reply.data is not None
        return reply.data

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> None:
        handle, bufs = self.codec.write(offset, data, fua)
        await self._send(handle, bufs)

    async def flush(self) -> None:
        handle, bufs = self.codec.flush()
        await self._send(handle, bufs)

    async def close(self) -> None:
        """NBD_CMD_DISC (when the connection still works), then close."""
        if self.transport is None:
            return
        if self.lost is None and self.ready is not None:
            with contextlib.suppress(Exception):
                self.transport.writelines(self.codec.disconnect())
        self.transport.close()
        self.lost = self.lost or NbdConnectionLost("closed")


class Pool:
    """Several connections to one export; requests go round-robin."""

    def __init__(self, target: Target, conns: list[Connection]) -> None:
        self.target = target
        self.conns = conns
        self._rr = itertools.cycle(range(len(conns)))
        ready = conns[0].ready
        assert ready is not None
        self.ready = ready

    @classmethod
    async def connect(
        cls, uri: str | Target, connections: int = 4, structured: bool = True
    ) -> Pool:
        target = parse_uri(uri) if isinstance(uri, str) else uri
        conns: list[Connection] = []
        try:
            for _ in range(max(1, connections)):
                conns.append(await Connection.connect(target, structured))
        except BaseException:
            for c in conns:
                await c.close()
            raise
        return cls(target, conns)

    @property
    def size(self) -> int:
        return self.ready.size

    @property
    def multi_conn(self) -> bool:
        return self.ready.multi_conn

    def pick(self) -> Connection:
        for _ in range(len(self.conns)):
            c = self.conns[next(self._rr)]
            if not c.closed:
                return c
        raise NbdConnectionLost(f"every connection to {self.target} is lost")

    async def read(self, offset: int, length: int) -> bytearray:
        return await self.pick().read(offset, length)

    async def close(self) -> None:
        for c in self.conns:
            await c.close()
