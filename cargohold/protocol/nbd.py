"""The NBD protocol, server side: fixed newstyle handshake and transmission. Sans-I/O.

Bytes in, events out; no sockets. ``frontend/nbd_server.py`` wraps one ``ServerConnection``
around each accepted connection: it writes ``greeting()``, feeds what it receives to
``feed()``, sends ``data_to_send()`` after each feed during the handshake, and answers the
``Request`` / ``Invalid`` events of the transmission phase with the ``reply_*`` encoders
(lists of buffers, for ``writelines``: the data of a read is never copied).

The handshake (option haggling) is handled entirely here: NBD_OPT_EXPORT_NAME, GO, INFO,
LIST, ABORT, STRUCTURED_REPLY, LIST_META_CONTEXT / SET_META_CONTEXT (``base:allocation``),
STARTTLS; every other option is answered with NBD_REP_ERR_UNSUP.

TLS (``tls_required=True``: the spec's FORCEDTLS mode, for a network endpoint): before TLS
every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is answered NBD_REP_ERR_TLS_REQD, so
nothing (not even NBD_OPT_LIST or the empty export name) reveals the export; EXPORT_NAME,
which cannot be answered with an error, hangs up. STARTTLS is acknowledged and yields a
``StartTLS`` event: the owner sends the ACK, upgrades its transport, then calls
``tls_started``; if the peer's certificate may not use the export, ``deny`` makes every
later option fail with NBD_REP_ERR_POLICY. Without ``tls_required`` (a unix socket, or
loopback: the consumer runs here) STARTTLS is answered NBD_REP_ERR_POLICY. Requests are validated here
(flags, bounds, alignment, read-only) so that the shell only runs valid ones.

Errors say whose fault it was. ``RemoteProtocolError``: the client broke the protocol (bad
magic, unknown client flags, oversized option or write payload, unknown export name on
EXPORT_NAME): drop the connection. A well-framed but wrong request becomes an ``Invalid``
event carrying the errno the spec prescribes; the connection goes on.

Spec: NetworkBlockDevice/nbd doc/proto.md. What we support and decided: docs/formats/nbd.md.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cargohold.constants import BLOCK_SIZE, MAX_IO_BYTES
from cargohold.errors import RemoteProtocolError
from cargohold.protocol.framing import StreamBuffer

# --- magic numbers ------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# --- handshake flags --------------------------------------------------------------------
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# --- transmission flags -------------------------------------------------------------------
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# --- options and option replies -------------------------------------------------------------
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_PLATFORM = 2**31 + 4
REP_ERR_TLS_REQD = 2**31 + 5
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_SHUTDOWN = 2**31 + 7
REP_ERR_BLOCK_SIZE_REQD = 2**31 + 8
REP_ERR_TOO_BIG = 2**31 + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- commands, command flags, reply types --------------------------------------------------
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2**15 + 1
REPLY_TYPE_ERROR_OFFSET = 2**15 + 2

STATE_HOLE = 1 << 0  # base:allocation
STATE_ZERO = 1 << 1

# --- error values on the wire (the only ones the spec allows) ------------------------------
EPERM, EIO, ENOMEM, EINVAL, ENOSPC = 1, 5, 12, 22, 28
EOVERFLOW, ENOTSUP, ESHUTDOWN = 75, 95, 108
_ERRNO_TO_WIRE = {
    _errno.EPERM: EPERM,
    _errno.EROFS: EPERM,
    _errno.EACCES: EPERM,
    _errno.EIO: EIO,
    _errno.ENOMEM: ENOMEM,
    _errno.EINVAL: EINVAL,
    _errno.ENOENT: EINVAL,
    _errno.ENOSPC: ENOSPC,
    _errno.EDQUOT: ENOSPC,
    _errno.EFBIG: ENOSPC,
    _errno.EOVERFLOW: EOVERFLOW,
    _errno.EOPNOTSUPP: ENOTSUP,
    _errno.ENOTSUP: ENOTSUP,
    _errno.ESHUTDOWN: ESHUTDOWN,
}

BASE_ALLOCATION = "base:allocation"
META_CONTEXT_ID = 1  # the id of base:allocation once selected
MAX_OPTION_BYTES = 64 * 1024  # larger option data: hard disconnect (denial of service)
MAX_OPTIONS = 1024  # options per connection before we hang up on a looping client
MAX_STRING = 4096  # the spec's limit on names and queries
MAX_ERROR_MESSAGE = 4096
MAX_BLOCK_STATUS_EXTENTS = 1024  # descriptors per BLOCK_STATUS reply (the spec lets us stop)
# A growable export (``Export.growable``): the same volume under NAME + GROWABLE_SUFFIX,
# advertised at GROWABLE_CEILING (the largest volume the manager makes) while requests are
# still checked against the live size. For clients whose size is fixed at connect (nbdfuse):
# the CSI node limits the device above it to the real size and raises the limit on expansion.
GROWABLE_SUFFIX = "+growable"
GROWABLE_CEILING = 256 << 40

_OPT_HDR = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPT_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
_SIMPLE = struct.Struct(">IIQ")  # magic, error, handle
_CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, length
_CHUNK_DATA = struct.Struct(">IHHQIQ")  # ... + offset of OFFSET_DATA
_GREETING = struct.Struct(">QQH")
_CMD_NAMES = {
    CMD_READ: "READ",
    CMD_WRITE: "WRITE",
    CMD_DISC: "DISC",
    CMD_FLUSH: "FLUSH",
    CMD_TRIM: "TRIM",
    CMD_CACHE: "CACHE",
    CMD_WRITE_ZEROES: "WRITE_ZEROES",
    CMD_BLOCK_STATUS: "BLOCK_STATUS",
}
# command flags each command accepts (FUA is valid on every command once advertised)
_ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_FUA | CMD_FLAG_DF,
    CMD_WRITE: CMD_FLAG_FUA,
    CMD_DISC: CMD_FLAG_FUA,
    CMD_FLUSH: CMD_FLAG_FUA,
    CMD_TRIM: CMD_FLAG_FUA,
    CMD_CACHE: CMD_FLAG_FUA,
    CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
    CMD_BLOCK_STATUS: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
}
_WRITES = frozenset({CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES})


def wire_errno(err: int) -> int:
    """Map a local errno onto the values the NBD spec allows (EIO when unsure)."""
    return _ERRNO_TO_WIRE.get(err, EIO)


def command_name(cmd: int) -> str:
    return _CMD_NAMES.get(cmd, f"command {cmd}")


@dataclass(frozen=True, slots=True)
class Export:
    """What the server offers: one export (the volume). Its size is asked for live."""

    name: str = ""
    description: str = ""
    read_only: bool = False
    multi_conn: bool = True
    min_block: int = BLOCK_SIZE  # for clients that negotiate block sizes
    preferred_block: int = BLOCK_SIZE
    max_block: int = MAX_IO_BYTES
    growable: bool = False  # also answer NAME + GROWABLE_SUFFIX (advertised at the ceiling)


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """Option haggling is over: the transmission phase begins."""

    structured: bool  # structured replies negotiated
    meta_context: int  # id of base:allocation, 0 when no context is selected
    block_sizes: bool  # the client promised to honour our block size constraints
    flags: int  # the transmission flags sent


@dataclass(frozen=True, slots=True)
class Aborted:
    """The client sent NBD_OPT_ABORT (our ACK is in ``data_to_send``): close after sending."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """NBD_OPT_STARTTLS was acknowledged (the ACK is in ``data_to_send``): send it, upgrade
    the transport to TLS, then call ``tls_started``. Nothing is read meanwhile."""


@dataclass(frozen=True, slots=True)
class Request:
    """A valid transmission request. ``data`` is the payload of a WRITE (else None)."""

    cmd: int
    flags: int
    handle: int
    offset: int
    length: int
    data: memoryview | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A well-framed request the spec says to fail: answer ``errno`` and go on."""

    cmd: int
    flags: int
    handle: int
    offset: int
    length: int
    errno: int
    message: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """NBD_CMD_DISC: finish what is in flight, then close. Nothing more will be read."""


Event = Ready | Aborted | StartTLS | Request | Invalid | Disconnect

# handshake states (the transmission phase has its own decoder loop)
_S_CLIENT_FLAGS = "client-flags"
_S_OPTIONS = "options"
_S_TLS = "tls-handshake"  # STARTTLS acknowledged: the owner upgrades the transport
_S_TRANSMISSION = "transmission"
_S_DONE = "done"


class ServerConnection:
    """One client connection, server side. Not thread-safe; one owner."""

    def __init__(self, export: Export, size: Callable[[], int], tls_required: bool = False) -> None:
        self.export = export
        self._size = size
        self.tls_required = tls_required  # FORCEDTLS (module docstring)
        self.tls = False  # the TLS upgrade is done: options are read over TLS
        self.denied = ""  # after TLS: why this peer may not use the export (``deny``)
        self.state = _S_CLIENT_FLAGS
        self.no_zeroes = False
        self.structured = False
        self.block_sizes = False
        self.meta_context = 0
        self.flags = 0
        self._options = 0
        self._buf = bytearray()  # handshake bytes not yet parsed
        self._out: list[bytes] = []
        # transmission decoder
        self._stream = StreamBuffer()  # transmission phase

    # --- handshake ------------------------------------------------------------------------
    def greeting(self) -> bytes:
        return _GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)

    def data_to_send(self) -> bytes:
        """Handshake replies produced by the last ``feed`` (empty once transmitting)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def transmission_flags(self) -> int:
        e = self.export
        f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE
        if e.read_only:
            f |= FLAG_READ_ONLY
        else:
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO
        if e.multi_conn:
            f |= FLAG_CAN_MULTI_CONN
        if self.structured:
            f |= FLAG_SEND_DF  # every read is answered with one content chunk
        return f

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
        if self.state == _S_TRANSMISSION:
            return self._feed_requests(data)
        if self.state == _S_DONE:
            return []  # after DISC or ABORT nothing more is read
        if self.state == _S_TLS:
            raise RemoteProtocolError("bytes in clear text after NBD_OPT_STARTTLS was acknowledged")
        self._buf += data
        events: list[Event] = []
        while self.state in (_S_CLIENT_FLAGS, _S_OPTIONS):
            if self.state == _S_CLIENT_FLAGS:
                if len(self._buf) < 4:
                    return events
                (cflags,) = struct.unpack_from(">I", self._buf)
                del self._buf[:4]
                if cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
                    raise RemoteProtocolError(f"unknown client flags {cflags:#x}")
                self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
                self.state = _S_OPTIONS
                continue
            if len(self._buf) < _OPT_HDR.size:
                return events
            magic, opt, length = _OPT_HDR.unpack_from(self._buf)
            if magic != IHAVEOPT:
                raise RemoteProtocolError(f"bad option magic {magic:#x} (expected IHAVEOPT)")
            if length > MAX_OPTION_BYTES:
                raise RemoteProtocolError(f"option {opt} carries {length} bytes (limit 64 KiB)")
            if len(self._buf) < _OPT_HDR.size + length:
                return events
            body = bytes(self._buf[_OPT_HDR.size : _OPT_HDR.size + length])
            del self._buf[: _OPT_HDR.size + length]
            self._options += 1
            if self._options > MAX_OPTIONS:
                raise RemoteProtocolError(f"more than {MAX_OPTIONS} options: hanging up")
            ev = self._option(opt, body)
            if ev is not None:
                events.append(ev)
            if self.state == _S_TLS:
                if self._buf:  # the client must wait for our ACK: injected bytes
                    raise RemoteProtocolError("bytes in clear text after NBD_OPT_STARTTLS")
                return events
        if self.state == _S_TRANSMISSION and self._buf:
            rest, self._buf = bytes(self._buf), bytearray()
            events += self._feed_requests(rest)
        return events

    def _reply(self, opt: int, rtype: int, payload: bytes = b"") -> None:
        self._out.append(_OPT_REPLY.pack(OPT_REPLY_MAGIC, opt, rtype, len(payload)) + payload)

    def _error(self, opt: int, rtype: int, message: str) -> None:
        self._reply(opt, rtype, message.encode()[:MAX_STRING])

    def _known_name(self, name: str) -> bool:
        return name in ("", self.export.name) or self._is_growable(name)

    def _is_growable(self, name: str) -> bool:
        return self.export.growable and name == self.export.name + GROWABLE_SUFFIX

    def _advertised(self, name: str) -> int:
        """The size the handshake announces for ``name``: the ceiling for the growable
        name (never less than the live size), else the live size."""
        size = self._size()
        return max(size, GROWABLE_CEILING) if self._is_growable(name) else size

    # --- TLS (module docstring) -----------------------------------------------------------
    def tls_started(self) -> None:
        """The owner's transport now speaks TLS: option haggling goes on over it."""
        if self.state != _S_TLS:
            raise RuntimeError(f"tls_started in state {self.state}")
        self.tls = True
        self.state = _S_OPTIONS

    def deny(self, why: str) -> None:
        """The peer authenticated, but may not use the export: every later option but
        ABORT fails with NBD_REP_ERR_POLICY saying ``why``; EXPORT_NAME hangs up."""
        self.denied = why or "permission denied"

    def _gate(self, opt: int) -> bool:
        """Answer ``opt`` here when TLS or authorization stands in its way; -> answered."""
        if opt == OPT_ABORT or (opt == OPT_STARTTLS and not self.tls):
            return False
        if self.tls_required and not self.tls:
            if opt == OPT_EXPORT_NAME:
                raise RemoteProtocolError(
                    "NBD_OPT_EXPORT_NAME before TLS: this server requires TLS"
                )
            self._error(opt, REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first")
            return True
        if self.denied:
            if opt == OPT_EXPORT_NAME:
                raise RemoteProtocolError(f"NBD_OPT_EXPORT_NAME refused: {self.denied}")
            self._error(opt, REP_ERR_POLICY, self.denied)
            return True
        return False

    def _starttls(self, opt: int, body: bytes) -> Event | None:
        if body:
            self._error(opt, REP_ERR_INVALID, "NBD_OPT_STARTTLS carries no data")
        elif self.tls:
            self._error(opt, REP_ERR_INVALID, "TLS is already in use on this connection")
        elif not self.tls_required:
            self._error(
                opt,
                REP_ERR_POLICY,
                "no TLS on this endpoint: it is local (unix socket or loopback)",
            )
        else:
            self._reply(opt, REP_ACK)
            self.state = _S_TLS
            return StartTLS()
        return None

    def _option(self, opt: int, body: bytes) -> Event | None:
        if self._gate(opt):
            return None
        if opt == OPT_STARTTLS:
            return self._starttls(opt, body)
        if opt == OPT_EXPORT_NAME:
            name = _decode_string(body)
            if name is None or not self._known_name(name):
                raise RemoteProtocolError(f"no export named {body[:256]!r}")
            self.flags = self.transmission_flags()
            out = struct.pack(">QH", self._advertised(name), self.flags)
            self._out.append(out if self.no_zeroes else out + bytes(124))
            return self._enter(block_sizes=False)
        if opt == OPT_ABORT:
            self._reply(opt, REP_ACK)
            self.state = _S_DONE
            return Aborted()
        if opt == OPT_LIST:
            if body:
                self._error(opt, REP_ERR_INVALID, "NBD_OPT_LIST carries no data")
                return None
            listed = self.export.name.encode()
            self._reply(opt, REP_SERVER, struct.pack(">I", len(listed)) + listed)
            self._reply(opt, REP_ACK)
            return None
        if opt in (OPT_INFO, OPT_GO):
            return self._info_go(opt, body)
        if opt == OPT_STRUCTURED_REPLY:
            if body:
                self._error(opt, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY carries no data")
                return None
            self.structured = True
            self._reply(opt, REP_ACK)
            return None
        if opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            self._meta_context(opt, body)
            return None
        self._error(opt, REP_ERR_UNSUP, f"option {opt} is not supported")
        return None

    def _info_go(self, opt: int, body: bytes) -> Event | None:
        what = "NBD_OPT_GO" if opt == OPT_GO else "NBD_OPT_INFO"
        parsed = _parse_info_request(body)
        if parsed is None:
            self._error(opt, REP_ERR_INVALID, f"malformed {what} request")
            return None
        name, requests = parsed
        if not self._known_name(name):
            self._error(opt, REP_ERR_UNKNOWN, f"no export named {name!r}")
            return None
        e = self.export
        wants_sizes = INFO_BLOCK_SIZE in requests
        flags = self.transmission_flags()
        self._reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, self._advertised(name), flags))
        if INFO_NAME in requests:
            self._reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + e.name.encode())
        if INFO_DESCRIPTION in requests and e.description:
            desc = e.description.encode()[:MAX_STRING]
            self._reply(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + desc)
        # Always sent: a client that did not ask gets min 1 (we read-modify-write for it).
        minimum = e.min_block if wants_sizes else 1
        self._reply(
            opt,
            REP_INFO,
            struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, e.preferred_block, e.max_block),
        )
        self._reply(opt, REP_ACK)
        if opt == OPT_INFO:
            return None
        self.flags = flags
        return self._enter(block_sizes=wants_sizes)

    def _meta_context(self, opt: int, body: bytes) -> None:
        if not self.structured:
            self._error(opt, REP_ERR_INVALID, "negotiate structured replies first")
            return
        parsed = _parse_meta_request(body)
        if parsed is None:
            self._error(opt, REP_ERR_INVALID, "malformed meta context request")
            return
        name, queries = parsed
        if not self._known_name(name):
            self._error(opt, REP_ERR_UNKNOWN, f"no export named {name!r}")
            return
        if opt == OPT_LIST_META_CONTEXT:
            found = not queries or any(q in ("base:", BASE_ALLOCATION) for q in queries)
            if found:
                self._reply(opt, REP_META_CONTEXT, struct.pack(">I", 0) + BASE_ALLOCATION.encode())
        else:
            found = BASE_ALLOCATION in queries
            self.meta_context = META_CONTEXT_ID if found else 0
            if found:
                payload = struct.pack(">I", META_CONTEXT_ID) + BASE_ALLOCATION.encode()
                self._reply(opt, REP_META_CONTEXT, payload)
        self._reply(opt, REP_ACK)

    def _enter(self, block_sizes: bool) -> Ready:
        self.state = _S_TRANSMISSION
        self.block_sizes = block_sizes
        if not self.structured:
            self.meta_context = 0
        return Ready(self.structured, self.meta_context, block_sizes, self.flags)

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
                self.state = _S_DONE
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
        allowed = _ALLOWED_FLAGS.get(cmd)
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
        if cmd in _WRITES and e.read_only:
            return EPERM, "the export is read-only"
        if cmd == CMD_BLOCK_STATUS and not self.meta_context:
            return EINVAL, "BLOCK_STATUS without a selected meta context"
        if length == 0:
            return EINVAL, f"{command_name(cmd)} of length 0"
        if cmd == CMD_READ and length > e.max_block:
            return EOVERFLOW, f"read of {length} bytes exceeds the {e.max_block} limit"
        size = self._size()
        if offset + length > size:
            err = ENOSPC if cmd in _WRITES else EINVAL
            return err, f"range [{offset}, {offset + length}) is beyond the size {size}"
        if self.block_sizes and (offset | length) % e.min_block:
            return EINVAL, f"offset {offset} and length {length} must be multiples of {e.min_block}"
        return None

    # --- replies ---------------------------------------------------------------------------
    def reply_ok(self, handle: int) -> list[bytes]:
        """Success without payload (a simple reply is allowed for it in both modes)."""
        return [_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, handle)]

    def reply_read(
        self, handle: int, offset: int, data: bytes | bytearray | memoryview
    ) -> list[bytes | bytearray | memoryview]:
        """The data of a successful READ: header and data as separate buffers."""
        if self.structured:
            hdr = _CHUNK_DATA.pack(
                STRUCTURED_REPLY_MAGIC,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                handle,
                len(data) + 8,
                offset,
            )
        else:
            hdr = _SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, handle)
        return [hdr, data]

    def reply_error(
        self, handle: int, err: int, message: str = "", offset: int | None = None
    ) -> list[bytes]:
        """A failed request. ``err`` is any errno; it is mapped to the spec's values.
        Structured clients get the message too (and the offset, for ERROR_OFFSET)."""
        code = wire_errno(err)
        if not self.structured:
            return [_SIMPLE.pack(SIMPLE_REPLY_MAGIC, code, handle)]
        msg = message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE]
        if offset is None:
            body = struct.pack(">IH", code, len(msg)) + msg
            rtype = REPLY_TYPE_ERROR
        else:
            body = struct.pack(">IH", code, len(msg)) + msg + struct.pack(">Q", offset)
            rtype = REPLY_TYPE_ERROR_OFFSET
        hdr = _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, rtype, handle, len(body))
        return [hdr + body]

    def reply_block_status(self, handle: int, extents: list[tuple[int, int]]) -> list[bytes]:
        """One BLOCK_STATUS chunk for base:allocation: (length, flags) descriptors."""
        if not extents:
            raise ValueError("BLOCK_STATUS needs at least one descriptor")
        flat = [v for ext in extents for v in ext]
        body = struct.pack(f">I{len(flat)}I", self.meta_context, *flat)
        hdr = _CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle, len(body)
        )
        return [hdr + body]


# --- option bodies ---------------------------------------------------------------------------


def _decode_string(raw: bytes) -> str | None:
    if len(raw) > MAX_STRING or b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_info_request(body: bytes) -> tuple[str, list[int]] | None:
    """NBD_OPT_INFO/GO: name length, name, request count, requests (16 bits each)."""
    if len(body) < 6:
        return None
    (nlen,) = struct.unpack_from(">I", body)
    if 4 + nlen + 2 > len(body):
        return None
    name = _decode_string(body[4 : 4 + nlen])
    (count,) = struct.unpack_from(">H", body, 4 + nlen)
    if name is None or len(body) != 4 + nlen + 2 + 2 * count:
        return None
    return name, list(struct.unpack_from(f">{count}H", body, 6 + nlen))


def _parse_meta_request(body: bytes) -> tuple[str, list[str]] | None:
    """LIST/SET_META_CONTEXT: name length, name, query count, (length, query) each."""
    if len(body) < 8:
        return None
    (nlen,) = struct.unpack_from(">I", body)
    if 4 + nlen + 4 > len(body):
        return None
    name = _decode_string(body[4 : 4 + nlen])
    (count,) = struct.unpack_from(">I", body, 4 + nlen)
    pos = 8 + nlen
    queries: list[str] = []
    for _ in range(count):
        if pos + 4 > len(body):
            return None
        (qlen,) = struct.unpack_from(">I", body, pos)
        query = _decode_string(body[pos + 4 : pos + 4 + qlen])
        if query is None or pos + 4 + qlen > len(body):
            return None
        queries.append(query)
        pos += 4 + qlen
    if name is None or pos != len(body):
        return None
    return name, queries
