"""The NBD protocol, client side: fixed newstyle handshake and transmission. Sans-I/O.

Bytes in, events out; no sockets. ``cargohold/verify/client.py`` wraps one
``ClientConnection`` around each socket: it feeds what it receives to ``feed()`` and
sends ``data_to_send()`` after every feed during the handshake; in the transmission phase
it encodes requests with ``read`` / ``write`` / ``flush`` / ``disconnect`` (each returns
the handle and the buffers to send) and gets one ``Reply`` event per finished request.

Handshake: the client waits for the server's greeting (``NBDMAGIC``, ``IHAVEOPT``, fixed
newstyle required), answers with ``FIXED_NEWSTYLE`` (and ``NO_ZEROES`` when offered), asks
for structured replies (``NBD_OPT_STRUCTURED_REPLY``, optional: a refusal is fine), then
``NBD_OPT_GO`` with the export name and an ``NBD_INFO_BLOCK_SIZE`` request. A server
that does not know ``NBD_OPT_GO`` (``NBD_REP_ERR_UNSUP``) gets ``NBD_OPT_EXPORT_NAME``
instead. The result is a ``Ready`` event (size, transmission flags, block sizes).

Transmission: requests may be pipelined; replies come in any order. Simple replies and
structured replies (``OFFSET_DATA``, ``OFFSET_HOLE``, ``NONE``, ``ERROR``,
``ERROR_OFFSET``; unknown error types are errors too) are decoded. The payload of a read
is copied once, straight from the received chunks into the reply's buffer (holes stay
zero). A request's ``Reply`` comes with the chunk that has ``NBD_REPLY_FLAG_DONE``.

Errors say whose fault it was. ``RemoteProtocolError``: the server broke the protocol
(bad magic, a reply to a handle not in flight, a read chunk outside its request, an
oversized chunk): drop the connection. ``LocalProtocolError``: we were asked to send
something we must not (a request before the handshake ended, a write beyond the end of a
read-only export...). An option the server refuses (unknown export name) raises
``NotFound`` / ``RequestError`` with the server's message. A request that fails is a
``Reply`` with a non-zero ``error`` (the wire errno); the connection goes on.

Spec: NetworkBlockDevice/nbd doc/proto.md. The server side is ``cargohold.protocol.nbd``,
whose constants this module shares.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cargohold.errors import LocalProtocolError, NotFound, RemoteProtocolError, RequestError
from cargohold.protocol.nbd import (
    CMD_DISC,
    CMD_FLAG_FUA,
    CMD_FLUSH,
    CMD_READ,
    CMD_WRITE,
    FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES,
    FLAG_CAN_MULTI_CONN,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    FLAG_READ_ONLY,
    FLAG_SEND_FLUSH,
    FLAG_SEND_FUA,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    NBDMAGIC,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_REPLY_MAGIC,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REPLY_FLAG_DONE,
    REPLY_TYPE_ERROR,
    REPLY_TYPE_ERROR_OFFSET,
    REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    command_name,
)

MAX_OPTION_REPLY = 64 * 1024  # larger option replies: the server is hostile or broken
MAX_CHUNK_META = 64 * 1024  # payload of a non-data structured chunk (error messages...)
MAX_READ = 64 * 1024 * 1024  # the largest read we ask for (servers allow 32 MiB or less)
_REP_ERR_BIT = 1 << 31
_REPLY_TYPE_ERR_BIT = 1 << 15

_GREETING = struct.Struct(">QQH")
_OPT = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPT_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
_SIMPLE = struct.Struct(">IIQ")  # magic, error, handle
_CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, length

# handshake states
_S_GREETING = "greeting"
_S_STRUCTURED = "structured-reply"
_S_GO = "go"
_S_EXPORT_NAME = "export-name"
_S_TRANSMISSION = "transmission"
_S_CLOSED = "closed"


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake is over: requests may be sent."""

    size: int
    flags: int  # transmission flags
    structured: bool
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = 32 * 1024 * 1024

    @property
    def read_only(self) -> bool:
        return bool(self.flags & FLAG_READ_ONLY)

    @property
    def can_flush(self) -> bool:
        return bool(self.flags & FLAG_SEND_FLUSH)

    @property
    def can_fua(self) -> bool:
        return bool(self.flags & FLAG_SEND_FUA)

    @property
    def multi_conn(self) -> bool:
        return bool(self.flags & FLAG_CAN_MULTI_CONN)


@dataclass(frozen=True, slots=True)
class Reply:
    """A request finished. ``error`` is the wire errno (0: success); ``data`` is the
    payload of a successful READ (a bytearray of exactly the length asked for)."""

    handle: int
    cmd: int
    error: int = 0
    data: bytearray | None = None
    message: str = ""


Event = Ready | Reply


@dataclass(slots=True)
class _Pending:
    cmd: int
    offset: int
    length: int
    data: bytearray | None = None  # READ: filled by the reply
    error: int = 0
    message: str = ""
    seen_done: bool = False


class ClientConnection:
    """One connection, client side. Not thread-safe; one owner.

    ``structured``: ask for structured replies (the server may refuse). Handles are
    allocated here: consecutive integers from 1.
    """

    def __init__(self, export_name: str = "", structured: bool = True) -> None:
        self.export_name = export_name
        self.want_structured = structured
        self.state = _S_GREETING
        self.structured = False
        self.no_zeroes = False
        self.ready: Ready | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._info: dict[str, int] = {}
        self._next_handle = 1
        self.in_flight: dict[int, _Pending] = {}
        # transmission decoder: the reply being assembled
        self._sink_target: memoryview | None = None  # where the payload being read goes
        self._sink_remaining = 0
        self._sink_done: tuple[int, bool] | None = None  # (handle, DONE flag) after the sink

    # --- handshake ------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Handshake bytes produced by the last ``feed`` (empty once transmitting)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Bytes from the server in, events out. Raises RemoteProtocolError: hang up."""
        if self.state == _S_TRANSMISSION:
            return self._feed_replies(data)
        if self.state == _S_CLOSED:
            return []
        self._buf += data
        events: list[Event] = []
        while self.state not in (_S_TRANSMISSION, _S_CLOSED):
            if not self._handshake_step(events):
                break
        if self.state == _S_TRANSMISSION and self._buf:
            rest, self._buf = bytes(self._buf), bytearray()
            events += self._feed_replies(rest)
        return events

    def _option(self, opt: int, body: bytes = b"") -> None:
        self._out.append(_OPT.pack(IHAVEOPT, opt, len(body)) + body)

    def _send_go(self) -> None:
        name = self.export_name.encode()
        body = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._option(OPT_GO, body)
        self.state = _S_GO

    def _handshake_step(self, events: list[Event]) -> bool:
        """Parse one handshake message; False when more bytes are needed."""
        if self.state == _S_GREETING:
            if len(self._buf) < _GREETING.size:
                return False
            magic, opt_magic, hflags = _GREETING.unpack_from(self._buf)
            del self._buf[: _GREETING.size]
            if magic != NBDMAGIC:
                raise RemoteProtocolError(f"bad greeting magic {magic:#x} (expected NBDMAGIC)")
            if opt_magic != IHAVEOPT:
                raise RemoteProtocolError(
                    f"not a newstyle server (got {opt_magic:#x}, expected IHAVEOPT)"
                )
            if not hflags & FLAG_FIXED_NEWSTYLE:
                raise RemoteProtocolError("the server does not speak fixed newstyle")
            self.no_zeroes = bool(hflags & FLAG_NO_ZEROES)
            cflags = FLAG_C_FIXED_NEWSTYLE | (FLAG_C_NO_ZEROES if self.no_zeroes else 0)
            self._out.append(struct.pack(">I", cflags))
            if self.want_structured:
                self._option(OPT_STRUCTURED_REPLY)
                self.state = _S_STRUCTURED
            else:
                self._send_go()
            return True
        if self.state == _S_EXPORT_NAME:
            need = 10 if self.no_zeroes else 134
            if len(self._buf) < need:
                return False
            size, flags = struct.unpack_from(">QH", self._buf)
            del self._buf[:need]
            events.append(self._enter(size, flags))
            return True
        # an option reply
        if len(self._buf) < _OPT_REPLY.size:
            return False
        magic, opt, rtype, length = _OPT_REPLY.unpack_from(self._buf)
        if magic != OPT_REPLY_MAGIC:
            raise RemoteProtocolError(f"bad option reply magic {magic:#x}")
        if length > MAX_OPTION_REPLY:
            raise RemoteProtocolError(f"option reply of {length} bytes (limit 64 KiB)")
        if len(self._buf) < _OPT_REPLY.size + length:
            return False
        body = bytes(self._buf[_OPT_REPLY.size : _OPT_REPLY.size + length])
        del self._buf[: _OPT_REPLY.size + length]
        expected = OPT_STRUCTURED_REPLY if self.state == _S_STRUCTURED else OPT_GO
        if opt != expected:
            raise RemoteProtocolError(f"reply to option {opt}, expected one to {expected}")
        if self.state == _S_STRUCTURED:
            if rtype == REP_ACK:
                self.structured = True
            elif not rtype & _REP_ERR_BIT:
                raise RemoteProtocolError(f"unexpected reply {rtype} to STRUCTURED_REPLY")
            self._send_go()  # an error reply: go on with simple replies
            return True
        # NBD_OPT_GO
        if rtype == REP_INFO:
            self._parse_info(body)
            return True
        if rtype == REP_ACK:
            if "size" not in self._info:
                raise RemoteProtocolError("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
            events.append(self._enter(self._info["size"], self._info["flags"]))
            return True
        if rtype == REP_ERR_UNSUP:  # an old server: fall back to EXPORT_NAME
            self._option(OPT_EXPORT_NAME, self.export_name.encode())
            self.state = _S_EXPORT_NAME
            return True
        if rtype & _REP_ERR_BIT:
            message = body.decode("utf-8", "replace")
            self.state = _S_CLOSED
            if rtype == REP_ERR_UNKNOWN:
                raise NotFound(f"no export named {self.export_name!r}: {message}")
            raise RequestError(f"the server refused NBD_OPT_GO (error {rtype:#x}): {message}")
        return True  # other replies (e.g. NBD_REP_SERVER) are ignored, as the spec allows

    def _parse_info(self, body: bytes) -> None:
        if len(body) < 2:
            raise RemoteProtocolError("empty NBD_REP_INFO")
        (kind,) = struct.unpack_from(">H", body)
        if kind == INFO_EXPORT:
            if len(body) != 12:
                raise RemoteProtocolError(f"NBD_INFO_EXPORT of {len(body)} bytes (expected 12)")
            _, size, flags = struct.unpack(">HQH", body)
            self._info["size"], self._info["flags"] = size, flags
        elif kind == INFO_BLOCK_SIZE:
            if len(body) != 14:
                raise RemoteProtocolError(f"NBD_INFO_BLOCK_SIZE of {len(body)} bytes")
            _, lo, pref, hi = struct.unpack(">HIII", body)
            self._info.update(min_block=lo, preferred_block=pref, max_block=hi)
        # other information (name, description) is ignored

    def _enter(self, size: int, flags: int) -> Ready:
        self.state = _S_TRANSMISSION
        i = self._info
        self.ready = Ready(
            size,
            flags,
            self.structured,
            i.get("min_block", 1),
            i.get("preferred_block", 4096),
            i.get("max_block", 32 * 1024 * 1024),
        )
        return self.ready

    # --- requests --------------------------------------------------------------------------
    def _request(
        self, cmd: int, offset: int, length: int, flags: int, data: bytearray | None = None
    ) -> tuple[int, bytes]:
        if self.state != _S_TRANSMISSION or self.ready is None:
            raise LocalProtocolError(f"{command_name(cmd)} before the handshake finished")
        handle = self._next_handle
        self._next_handle = (self._next_handle + 1) & 0xFFFFFFFFFFFFFFFF or 1
        if cmd != CMD_DISC:
            self.in_flight[handle] = _Pending(cmd, offset, length, data)
        return handle, REQUEST.pack(REQUEST_MAGIC, flags, cmd, handle, offset, length)

    def _check_range(self, what: str, offset: int, length: int) -> None:
        assert self.ready is not None
        if offset < 0 or length <= 0 or offset + length > self.ready.size:
            raise LocalProtocolError(
                f"{what} of [{offset}, {offset + length}) on an export of {self.ready.size} bytes"
            )
        if (offset | length) % self.ready.min_block:  # we promised to honour it (GO)
            raise LocalProtocolError(
                f"{what} at {offset} of {length} bytes: not aligned to {self.ready.min_block}"
            )

    def read(self, offset: int, length: int) -> tuple[int, list[bytes]]:
        """A READ request: (handle, buffers to send)."""
        if self.ready is not None:
            self._check_range("read", offset, length)
        if length > MAX_READ:
            raise LocalProtocolError(f"read of {length} bytes (limit {MAX_READ})")
        handle, hdr = self._request(CMD_READ, offset, length, 0, bytearray(length))
        return handle, [hdr]

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> tuple[int, list[bytes | bytearray | memoryview]]:
        """A WRITE request: (handle, [header, data]) — the data is not copied."""
        if self.ready is not None:
            self._check_range("write", offset, len(data))
            if self.ready.read_only:
                raise LocalProtocolError("write to a read-only export")
            if fua and not self.ready.can_fua:
                raise LocalProtocolError("FUA on an export that does not support it")
        handle, hdr = self._request(CMD_WRITE, offset, len(data), CMD_FLAG_FUA if fua else 0)
        return handle, [hdr, data]

    def flush(self) -> tuple[int, list[bytes]]:
        if self.ready is not None and not self.ready.can_flush:
            raise LocalProtocolError("FLUSH on an export that does not support it")
        handle, hdr = self._request(CMD_FLUSH, 0, 0, 0)
        return handle, [hdr]

    def disconnect(self) -> list[bytes]:
        """NBD_CMD_DISC: the server finishes what is in flight, then closes."""
        _, hdr = self._request(CMD_DISC, 0, 0, 0)
        return [hdr]

    # --- replies ---------------------------------------------------------------------------
    def _feed_replies(self, data: bytes | bytearray | memoryview) -> list[Event]:
        events: list[Event] = []
        mv = memoryview(data).cast("B")
        pos = 0
        end = len(mv)
        while pos < end:
            if self._sink_remaining:
                n = min(self._sink_remaining, end - pos)
                target = self._sink_target
                if target is not None:
                    done = len(target) - self._sink_remaining
                    target[done : done + n] = mv[pos : pos + n]
                self._sink_remaining -= n
                pos += n
                if not self._sink_remaining:
                    self._sink_target = None
                    self._finish_chunk(events)
                continue
            self._buf += mv[pos:]
            pos = end
            self._parse_headers(events)
            if self._sink_remaining and self._buf:
                # the start of a payload was buffered with its header: move it to the sink
                rest, self._buf = bytes(self._buf), bytearray()
                events += self._feed_replies(rest)
        return events

    def _parse_headers(self, events: list[Event]) -> None:
        buf = self._buf
        while not self._sink_remaining and len(buf) >= 4:
            (magic,) = struct.unpack_from(">I", buf)
            if magic == SIMPLE_REPLY_MAGIC:
                if len(buf) < _SIMPLE.size:
                    return
                _, error, handle = _SIMPLE.unpack_from(buf)
                del buf[: _SIMPLE.size]
                p = self._pending(handle)
                if p.cmd == CMD_READ and error == 0:
                    if self.structured:
                        raise RemoteProtocolError(
                            f"simple reply to READ {handle} after structured replies"
                        )
                    assert p.data is not None
                    self._sink(memoryview(p.data), p.length, handle, True)
                    return
                p.error = error
                self._complete(handle, events)
            elif magic == STRUCTURED_REPLY_MAGIC:
                if not self.structured:
                    raise RemoteProtocolError("structured reply without negotiating it")
                if len(buf) < _CHUNK.size:
                    return
                _, flags, rtype, handle, length = _CHUNK.unpack_from(buf)
                p = self._pending(handle)
                if p.seen_done:
                    raise RemoteProtocolError(f"chunk for request {handle} after its last one")
                if rtype == REPLY_TYPE_OFFSET_DATA:
                    if p.cmd != CMD_READ:
                        raise RemoteProtocolError(f"data chunk in a reply to {command_name(p.cmd)}")
                    if length < 8:
                        raise RemoteProtocolError(f"OFFSET_DATA chunk of {length} bytes")
                    if len(buf) < _CHUNK.size + 8:
                        return
                    (offset,) = struct.unpack_from(">Q", buf, _CHUNK.size)
                    start = offset - p.offset
                    n = length - 8
                    if start < 0 or start + n > p.length or n == 0:
                        raise RemoteProtocolError(
                            f"data chunk [{offset}, {offset + n}) outside the read "
                            f"[{p.offset}, {p.offset + p.length})"
                        )
                    del buf[: _CHUNK.size + 8]
                    assert p.data is not None
                    self._sink(memoryview(p.data)[start : start + n], n, handle, bool(flags & 1))
                    return
                if length > MAX_CHUNK_META:
                    raise RemoteProtocolError(f"structured chunk of {length} bytes (type {rtype})")
                if len(buf) < _CHUNK.size + length:
                    return
                body = bytes(buf[_CHUNK.size : _CHUNK.size + length])
                del buf[: _CHUNK.size + length]
                self._chunk(p, rtype, body)
                if flags & REPLY_FLAG_DONE:
                    self._complete(handle, events)
            else:
                raise RemoteProtocolError(f"bad reply magic {magic:#x}")

    def _pending(self, handle: int) -> _Pending:
        p = self.in_flight.get(handle)
        if p is None:
            raise RemoteProtocolError(f"reply to handle {handle}, which is not in flight")
        return p

    def _sink(self, target: memoryview, n: int, handle: int, done: bool) -> None:
        self._sink_target = target
        self._sink_remaining = n
        self._sink_done = (handle, done)

    def _finish_chunk(self, events: list[Event]) -> None:
        assert self._sink_done is not None
        handle, done = self._sink_done
        self._sink_done = None
        if done:
            self._complete(handle, events)

    def _chunk(self, p: _Pending, rtype: int, body: bytes) -> None:
        if rtype == REPLY_TYPE_NONE:
            if body:
                raise RemoteProtocolError("NBD_REPLY_TYPE_NONE with a payload")
            return
        if rtype == REPLY_TYPE_OFFSET_HOLE:
            if p.cmd != CMD_READ or len(body) != 12:
                raise RemoteProtocolError("malformed OFFSET_HOLE chunk")
            offset, n = struct.unpack(">QI", body)
            start = offset - p.offset
            if start < 0 or start + n > p.length or n == 0:
                raise RemoteProtocolError(f"hole [{offset}, {offset + n}) outside the read")
            assert p.data is not None
            p.data[start : start + n] = bytes(n)  # already zero unless a chunk repeated
            return
        if rtype & _REPLY_TYPE_ERR_BIT:
            if len(body) < 6:
                raise RemoteProtocolError(f"error chunk of {len(body)} bytes")
            error, mlen = struct.unpack_from(">IH", body)
            extra = 8 if rtype == REPLY_TYPE_ERROR_OFFSET else 0
            if rtype in (REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET) and len(body) != (
                6 + mlen + extra
            ):
                raise RemoteProtocolError("error chunk length does not match its message")
            if error == 0:
                raise RemoteProtocolError("error chunk with error 0")
            p.error = p.error or error
            p.message = p.message or body[6 : 6 + mlen].decode("utf-8", "replace")
            return
        raise RemoteProtocolError(f"unknown structured reply type {rtype}")

    def _complete(self, handle: int, events: list[Event]) -> None:
        p = self.in_flight.pop(handle)
        data = p.data if p.cmd == CMD_READ and not p.error else None
        events.append(Reply(handle, p.cmd, p.error, data, p.message))


__all__ = [
    "CMD_FLUSH",
    "CMD_READ",
    "CMD_WRITE",
    "ClientConnection",
    "Event",
    "Ready",
    "Reply",
]
