"""The NBD protocol, server side: fixed newstyle handshake and transmission. Sans-I/O.

Bytes in, events out; no sockets. ``frontend/nbd_server.py`` wraps one ``ServerConnection``
around each accepted connection: it writes ``greeting()``, feeds what it receives to
``feed()``, sends ``data_to_send()`` after each feed during the handshake, and answers the
``Request`` / ``Invalid`` events of the transmission phase with the ``reply_*`` encoders
(lists of buffers, for ``writelines``: the data of a read is never copied).

This module is the codec's face and its transmission phase; import every NBD name from here.
The rest lives by role:
- ``nbd_wire``       constants, flags, errno values, limits and structs of the wire
- ``nbd_events``     the events ``feed`` returns (``Ready``, ``Request``, ``Invalid``, ...)
- ``nbd_handshake``  ``Export`` and ``ServerHandshake``: greeting, client flags, the option
                     phase and STARTTLS (the FORCEDTLS mode); ``ServerConnection``'s base
- ``nbd_client``     the client side (tests, benchmarks, ``cargohold verify``)

Requests are validated here (flags, bounds, alignment, read-only) so that the shell only
runs valid ones. Errors say whose fault it was. ``RemoteProtocolError``: the client broke
the protocol (bad magic, unknown client flags, oversized option or write payload, unknown
export name on EXPORT_NAME): drop the connection. A well-framed but wrong request becomes an
``Invalid`` event carrying the errno the spec prescribes; the connection goes on.

Spec: NetworkBlockDevice/nbd doc/proto.md. What we support and decided: docs/formats/nbd.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cargohold.errors import RemoteProtocolError
from cargohold.protocol.framing import StreamBuffer
from cargohold.protocol.nbd_events import (
    Aborted,
    Disconnect,
    Event,
    Invalid,
    Ready,
    Request,
    StartTLS,
)
from cargohold.protocol.nbd_handshake import S_DONE, S_TRANSMISSION, Export, ServerHandshake
from cargohold.protocol.nbd_wire import (
    ALLOWED_FLAGS,
    BASE_ALLOCATION,
    CHUNK,
    CHUNK_DATA,
    CMD_BLOCK_STATUS,
    CMD_CACHE,
    CMD_DISC,
    CMD_FLAG_DF,
    CMD_FLAG_FAST_ZERO,
    CMD_FLAG_FUA,
    CMD_FLAG_NO_HOLE,
    CMD_FLAG_REQ_ONE,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    EINVAL,
    EIO,
    ENOMEM,
    ENOSPC,
    ENOTSUP,
    EOVERFLOW,
    EPERM,
    ESHUTDOWN,
    FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES,
    FLAG_CAN_MULTI_CONN,
    FLAG_FIXED_NEWSTYLE,
    FLAG_HAS_FLAGS,
    FLAG_NO_ZEROES,
    FLAG_READ_ONLY,
    FLAG_ROTATIONAL,
    FLAG_SEND_CACHE,
    FLAG_SEND_DF,
    FLAG_SEND_FAST_ZERO,
    FLAG_SEND_FLUSH,
    FLAG_SEND_FUA,
    FLAG_SEND_RESIZE,
    FLAG_SEND_TRIM,
    FLAG_SEND_WRITE_ZEROES,
    GREETING,
    GROWABLE_CEILING,
    GROWABLE_SUFFIX,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_DESCRIPTION,
    INFO_EXPORT,
    INFO_NAME,
    MAX_BLOCK_STATUS_EXTENTS,
    MAX_ERROR_MESSAGE,
    MAX_OPTION_BYTES,
    MAX_OPTIONS,
    MAX_STRING,
    META_CONTEXT_ID,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_EXTENDED_HEADERS,
    OPT_GO,
    OPT_HEADER,
    OPT_INFO,
    OPT_LIST,
    OPT_LIST_META_CONTEXT,
    OPT_REPLY,
    OPT_REPLY_MAGIC,
    OPT_SET_META_CONTEXT,
    OPT_STARTTLS,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_ERR_BLOCK_SIZE_REQD,
    REP_ERR_INVALID,
    REP_ERR_PLATFORM,
    REP_ERR_POLICY,
    REP_ERR_SHUTDOWN,
    REP_ERR_TLS_REQD,
    REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_META_CONTEXT,
    REP_SERVER,
    REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS,
    REPLY_TYPE_ERROR,
    REPLY_TYPE_ERROR_OFFSET,
    REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE,
    REQUEST,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STATE_HOLE,
    STATE_ZERO,
    STRUCTURED_REPLY_MAGIC,
    WRITE_COMMANDS,
    command_name,
    wire_errno,
)

# Every name callers imported from this module before it was split (#15), and every public
# name of nbd_wire and nbd_events (tests/unit/protocol/test_nbd_reexports.py checks both).
__all__ = [
    "ALLOWED_FLAGS",
    "BASE_ALLOCATION",
    "CHUNK",
    "CHUNK_DATA",
    "CMD_BLOCK_STATUS",
    "CMD_CACHE",
    "CMD_DISC",
    "CMD_FLAG_DF",
    "CMD_FLAG_FAST_ZERO",
    "CMD_FLAG_FUA",
    "CMD_FLAG_NO_HOLE",
    "CMD_FLAG_REQ_ONE",
    "CMD_FLUSH",
    "CMD_READ",
    "CMD_TRIM",
    "CMD_WRITE",
    "CMD_WRITE_ZEROES",
    "EINVAL",
    "EIO",
    "ENOMEM",
    "ENOSPC",
    "ENOTSUP",
    "EOVERFLOW",
    "EPERM",
    "ESHUTDOWN",
    "FLAG_CAN_MULTI_CONN",
    "FLAG_C_FIXED_NEWSTYLE",
    "FLAG_C_NO_ZEROES",
    "FLAG_FIXED_NEWSTYLE",
    "FLAG_HAS_FLAGS",
    "FLAG_NO_ZEROES",
    "FLAG_READ_ONLY",
    "FLAG_ROTATIONAL",
    "FLAG_SEND_CACHE",
    "FLAG_SEND_DF",
    "FLAG_SEND_FAST_ZERO",
    "FLAG_SEND_FLUSH",
    "FLAG_SEND_FUA",
    "FLAG_SEND_RESIZE",
    "FLAG_SEND_TRIM",
    "FLAG_SEND_WRITE_ZEROES",
    "GREETING",
    "GROWABLE_CEILING",
    "GROWABLE_SUFFIX",
    "IHAVEOPT",
    "INFO_BLOCK_SIZE",
    "INFO_DESCRIPTION",
    "INFO_EXPORT",
    "INFO_NAME",
    "MAX_BLOCK_STATUS_EXTENTS",
    "MAX_ERROR_MESSAGE",
    "MAX_OPTIONS",
    "MAX_OPTION_BYTES",
    "MAX_STRING",
    "META_CONTEXT_ID",
    "NBDMAGIC",
    "OPT_ABORT",
    "OPT_EXPORT_NAME",
    "OPT_EXTENDED_HEADERS",
    "OPT_GO",
    "OPT_HEADER",
    "OPT_INFO",
    "OPT_LIST",
    "OPT_LIST_META_CONTEXT",
    "OPT_REPLY",
    "OPT_REPLY_MAGIC",
    "OPT_SET_META_CONTEXT",
    "OPT_STARTTLS",
    "OPT_STRUCTURED_REPLY",
    "REPLY_FLAG_DONE",
    "REPLY_TYPE_BLOCK_STATUS",
    "REPLY_TYPE_ERROR",
    "REPLY_TYPE_ERROR_OFFSET",
    "REPLY_TYPE_NONE",
    "REPLY_TYPE_OFFSET_DATA",
    "REPLY_TYPE_OFFSET_HOLE",
    "REP_ACK",
    "REP_ERR_BLOCK_SIZE_REQD",
    "REP_ERR_INVALID",
    "REP_ERR_PLATFORM",
    "REP_ERR_POLICY",
    "REP_ERR_SHUTDOWN",
    "REP_ERR_TLS_REQD",
    "REP_ERR_TOO_BIG",
    "REP_ERR_UNKNOWN",
    "REP_ERR_UNSUP",
    "REP_INFO",
    "REP_META_CONTEXT",
    "REP_SERVER",
    "REQUEST",
    "REQUEST_MAGIC",
    "SIMPLE_REPLY",
    "SIMPLE_REPLY_MAGIC",
    "STATE_HOLE",
    "STATE_ZERO",
    "STRUCTURED_REPLY_MAGIC",
    "WRITE_COMMANDS",
    "Aborted",
    "Disconnect",
    "Event",
    "Export",
    "Invalid",
    "Ready",
    "Request",
    "ServerConnection",
    "StartTLS",
    "command_name",
    "wire_errno",
]


class ServerConnection(ServerHandshake):
    """One client connection, server side: the handshake (``ServerHandshake``), then the
    transmission phase. Not thread-safe; one owner."""

    def __init__(self, export: Export, size: Callable[[], int], tls_required: bool = False) -> None:
        super().__init__(export, size, tls_required)
        self._stream = StreamBuffer()  # transmission phase

    def get_buffer(self) -> memoryview:
        """For owners that receive with readinto: where the next bytes go (large writes
        straight into a buffer of their own, ``framing.StreamBuffer``)."""
        return self._stream.get_buffer()

    def buffer_updated(self, n: int) -> list[Event]:
        """``n`` bytes arrived in the last ``get_buffer``: the events they complete."""
        data = self._stream.received(n)
        return [] if data is None else self.feed(data)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Bytes from the client in, events out. Raises RemoteProtocolError: hang up."""
        if self.state == S_TRANSMISSION:
            return self._feed_requests(data)
        if self.state == S_DONE:
            return []  # after DISC or ABORT nothing more is read
        events = self._feed_handshake(data)
        if self.state == S_TRANSMISSION and self._buf:
            rest, self._buf = bytes(self._buf), bytearray()
            events += self._feed_requests(rest)
        return events

    # --- transmission ----------------------------------------------------------------------
    def _feed_requests(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Requests that arrive whole in one chunk are sliced out without copying; a large
        write that spans chunks is joined once, when complete."""
        joined = self._stream.take(data)
        if joined is None:
            return []
        data = joined
        mv = memoryview(data)
        end = len(data)
        pos = 0
        hs = REQUEST.size
        out: list[Event] = []
        unpack = REQUEST.unpack_from
        while end - pos >= hs:
            magic, flags, cmd, handle, offset, length = unpack(data, pos)
            if magic != REQUEST_MAGIC:
                raise RemoteProtocolError(f"bad request magic {magic:#x}")
            if cmd == CMD_WRITE:
                if length > self.export.max_block:
                    raise RemoteProtocolError(
                        f"write of {length} bytes exceeds the {self.export.max_block} limit"
                    )
                if end - pos < hs + length:
                    self._stream.need = hs + length
                    break
                payload = mv[pos + hs : pos + hs + length]
                pos += hs + length
            else:
                payload = None
                pos += hs
            if cmd == CMD_DISC:
                self.state = S_DONE
                out.append(Disconnect())
                return out
            err = self._check(cmd, flags, offset, length)
            if err is None:
                out.append(Request(cmd, flags, handle, offset, length, payload))
            else:
                out.append(Invalid(cmd, flags, handle, offset, length, err[0], err[1]))
        self._stream.keep(data, pos, hs)
        return out

    def _check(self, cmd: int, flags: int, offset: int, length: int) -> tuple[int, str] | None:
        allowed = ALLOWED_FLAGS.get(cmd)
        if allowed is None:
            return EINVAL, f"unknown command {cmd}"
        if not self.structured:
            allowed &= ~CMD_FLAG_DF
        if flags & ~allowed:
            return EINVAL, f"flags {flags:#x} not valid for {command_name(cmd)}"
        if cmd == CMD_FLUSH:
            if offset or length:
                return EINVAL, "FLUSH must have offset and length 0"
            return None
        e = self.export
        if cmd in WRITE_COMMANDS and e.read_only:
            return EPERM, "the export is read-only"
        if cmd == CMD_BLOCK_STATUS and not self.meta_context:
            return EINVAL, "BLOCK_STATUS without a selected meta context"
        if length == 0:
            return EINVAL, f"{command_name(cmd)} of length 0"
        if cmd == CMD_READ and length > e.max_block:
            return EOVERFLOW, f"read of {length} bytes exceeds the {e.max_block} limit"
        size = self._size()
        if offset + length > size:
            err = ENOSPC if cmd in WRITE_COMMANDS else EINVAL
            return err, f"range [{offset}, {offset + length}) is beyond the size {size}"
        if self.block_sizes and (offset | length) % e.min_block:
            return EINVAL, f"offset {offset} and length {length} must be multiples of {e.min_block}"
        return None

    # --- replies ---------------------------------------------------------------------------
    def reply_ok(self, handle: int) -> list[bytes]:
        """Success without payload (a simple reply is allowed for it in both modes)."""
        return [SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle)]

    def reply_read(
        self, handle: int, offset: int, data: bytes | bytearray | memoryview
    ) -> list[bytes | bytearray | memoryview]:
        """The data of a successful READ: header and data as separate buffers."""
        if self.structured:
            hdr = CHUNK_DATA.pack(
                STRUCTURED_REPLY_MAGIC,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                handle,
                len(data) + 8,
                offset,
            )
        else:
            hdr = SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle)
        return [hdr, data]

    def reply_error(
        self, handle: int, err: int, message: str = "", offset: int | None = None
    ) -> list[bytes]:
        """A failed request. ``err`` is any errno; it is mapped to the spec's values.
        Structured clients get the message too (and the offset, for ERROR_OFFSET)."""
        code = wire_errno(err)
        if not self.structured:
            return [SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, code, handle)]
        msg = message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE]
        if offset is None:
            body = struct.pack(">IH", code, len(msg)) + msg
            rtype = REPLY_TYPE_ERROR
        else:
            body = struct.pack(">IH", code, len(msg)) + msg + struct.pack(">Q", offset)
            rtype = REPLY_TYPE_ERROR_OFFSET
        hdr = CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, rtype, handle, len(body))
        return [hdr + body]

    def reply_block_status(self, handle: int, extents: list[tuple[int, int]]) -> list[bytes]:
        """One BLOCK_STATUS chunk for base:allocation: (length, flags) descriptors."""
        if not extents:
            raise ValueError("BLOCK_STATUS needs at least one descriptor")
        flat = [v for ext in extents for v in ext]
        body = struct.pack(f">I{len(flat)}I", self.meta_context, *flat)
        hdr = CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle, len(body)
        )
        return [hdr + body]
