"""The NBD handshake, server side: greeting, client flags and the option phase. Sans-I/O.

``ServerHandshake`` is the first half of ``nbd.ServerConnection`` (its base class): it owns
what the client and the server agree on before transmission (structured replies, the
``base:allocation`` meta context, block sizes, the transmission flags) and hands over to the
transmission phase with a ``Ready`` event. Owners use ``ServerConnection``, never this class
alone.

Options handled: NBD_OPT_EXPORT_NAME, GO, INFO, LIST, ABORT, STRUCTURED_REPLY,
LIST_META_CONTEXT / SET_META_CONTEXT (``base:allocation``), STARTTLS; every other option is
answered with NBD_REP_ERR_UNSUP.

TLS (``tls_required=True``: the spec's FORCEDTLS mode, for a network endpoint): before TLS
every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is answered NBD_REP_ERR_TLS_REQD, so
nothing (not even NBD_OPT_LIST or the empty export name) reveals the export; EXPORT_NAME,
which cannot be answered with an error, hangs up. STARTTLS is acknowledged and yields a
``StartTLS`` event: the owner sends the ACK, upgrades its transport, then calls
``tls_started``; if the peer's certificate may not use the export, ``deny`` makes every
later option fail with NBD_REP_ERR_POLICY. Without ``tls_required`` (a unix socket, or
loopback: the consumer runs here) STARTTLS is answered NBD_REP_ERR_POLICY.

``RemoteProtocolError`` (hang up): bad magic, unknown client flags, an oversized option,
too many options, bytes in clear text after STARTTLS, an unknown export name on
EXPORT_NAME. A malformed option body is answered NBD_REP_ERR_INVALID and haggling goes on.

Spec: NetworkBlockDevice/nbd doc/proto.md. What we support and decided: docs/formats/nbd.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cargohold.constants import BLOCK_SIZE, MAX_IO_BYTES
from cargohold.errors import RemoteProtocolError
from cargohold.protocol.nbd_events import Aborted, Event, Ready, StartTLS
from cargohold.protocol.nbd_wire import (
    BASE_ALLOCATION,
    FLAG_C_FIXED_NEWSTYLE,
    FLAG_C_NO_ZEROES,
    FLAG_CAN_MULTI_CONN,
    FLAG_FIXED_NEWSTYLE,
    FLAG_HAS_FLAGS,
    FLAG_NO_ZEROES,
    FLAG_READ_ONLY,
    FLAG_SEND_CACHE,
    FLAG_SEND_DF,
    FLAG_SEND_FAST_ZERO,
    FLAG_SEND_FLUSH,
    FLAG_SEND_FUA,
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
    MAX_OPTION_BYTES,
    MAX_OPTIONS,
    MAX_STRING,
    META_CONTEXT_ID,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
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
    REP_ERR_INVALID,
    REP_ERR_POLICY,
    REP_ERR_TLS_REQD,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_META_CONTEXT,
    REP_SERVER,
)


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


# handshake states; S_TRANSMISSION and S_DONE are read by ``nbd.ServerConnection`` too
S_CLIENT_FLAGS = "client-flags"
S_OPTIONS = "options"
S_TLS = "tls-handshake"  # STARTTLS acknowledged: the owner upgrades the transport
S_TRANSMISSION = "transmission"
S_DONE = "done"


class ServerHandshake:
    """The option phase of one client connection (module docstring). Not thread-safe; one
    owner; subclassed by ``nbd.ServerConnection``."""

    def __init__(self, export: Export, size: Callable[[], int], tls_required: bool = False) -> None:
        self.export = export
        self._size = size
        self.tls_required = tls_required  # FORCEDTLS (module docstring)
        self.tls = False  # the TLS upgrade is done: options are read over TLS
        self.denied = ""  # after TLS: why this peer may not use the export (``deny``)
        self.state = S_CLIENT_FLAGS
        self.no_zeroes = False
        self.structured = False
        self.block_sizes = False
        self.meta_context = 0
        self.flags = 0
        self._options = 0
        self._buf = bytearray()  # handshake bytes not yet parsed
        self._out: list[bytes] = []

    # --- handshake ------------------------------------------------------------------------
    def greeting(self) -> bytes:
        return GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)

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

    def _feed_handshake(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Handshake bytes in, events out. Stops when the option phase ends (or pauses
        for TLS); bytes past the option that ended it stay in ``_buf``, for the
        transmission phase. Raises RemoteProtocolError: hang up."""
        if self.state == S_TLS:
            raise RemoteProtocolError("bytes in clear text after NBD_OPT_STARTTLS was acknowledged")
        self._buf += data
        events: list[Event] = []
        while self.state in (S_CLIENT_FLAGS, S_OPTIONS):
            if self.state == S_CLIENT_FLAGS:
                if len(self._buf) < 4:
                    return events
                (cflags,) = struct.unpack_from(">I", self._buf)
                del self._buf[:4]
                if cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
                    raise RemoteProtocolError(f"unknown client flags {cflags:#x}")
                self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
                self.state = S_OPTIONS
                continue
            if len(self._buf) < OPT_HEADER.size:
                return events
            magic, opt, length = OPT_HEADER.unpack_from(self._buf)
            if magic != IHAVEOPT:
                raise RemoteProtocolError(f"bad option magic {magic:#x} (expected IHAVEOPT)")
            if length > MAX_OPTION_BYTES:
                raise RemoteProtocolError(f"option {opt} carries {length} bytes (limit 64 KiB)")
            if len(self._buf) < OPT_HEADER.size + length:
                return events
            body = bytes(self._buf[OPT_HEADER.size : OPT_HEADER.size + length])
            del self._buf[: OPT_HEADER.size + length]
            self._options += 1
            if self._options > MAX_OPTIONS:
                raise RemoteProtocolError(f"more than {MAX_OPTIONS} options: hanging up")
            ev = self._option(opt, body)
            if ev is not None:
                events.append(ev)
            if self.state == S_TLS:
                if self._buf:  # the client must wait for our ACK: injected bytes
                    raise RemoteProtocolError("bytes in clear text after NBD_OPT_STARTTLS")
                return events
        return events

    def _reply(self, opt: int, rtype: int, payload: bytes = b"") -> None:
        self._out.append(OPT_REPLY.pack(OPT_REPLY_MAGIC, opt, rtype, len(payload)) + payload)

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
        if self.state != S_TLS:
            raise RuntimeError(f"tls_started in state {self.state}")
        self.tls = True
        self.state = S_OPTIONS

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
            self.state = S_TLS
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
            self.state = S_DONE
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
        self.state = S_TRANSMISSION
        self.block_sizes = block_sizes
        if not self.structured:
            self.meta_context = 0
        return Ready(self.structured, self.meta_context, block_sizes, self.flags)


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
