"""The server name (SNI) in a TLS ClientHello, read without taking part in TLS (sans-I/O),
and the routing names of the replica wire.

A replica server with worker processes shards replicas by ``crc32c(replica id)``. Under
TLS the parent cannot read the first request to learn which replica a connection is for,
so the client says it in the one field TLS sends in clear before any key exchange: the
server name of its ClientHello. ``routing_name(replica_id)`` is that name
(``r<crc32c as 8 hex digits>.replica.cargohold``, a valid DNS name that reveals nothing but
the shard); the parent peeks at the ClientHello (``client_hello_sni``) without consuming
it, computes the owner and hands the socket to that worker, which then does the
handshake. docs/formats/replica-wire.md, "TLS and routing".

Only what routing needs is parsed: the TLS record layer (one or more handshake records
carrying the ClientHello) and the ``server_name`` extension (RFC 6066, section 3).
"""

from __future__ import annotations

import re
from typing import Final

import crc32c

from cargohold.errors import RemoteProtocolError

ROUTING_SUFFIX: Final = ".replica.cargohold"
_ROUTING = re.compile(r"^r([0-9a-f]{8})\.replica\.cargohold$")

MAX_HELLO: Final = 64 * 1024
"""Bytes of records a ClientHello may take; more is not a client of ours."""

_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 1
_SERVER_NAME: Final = 0
_HOST_NAME: Final = 0


class Incomplete(Exception):
    """More bytes are needed to see the whole ClientHello (not an error: wait for them)."""


def routing_name(replica_id: str) -> str:
    """The server name a client sends for a connection that will open, create or delete
    ``replica_id``."""
    return f"r{crc32c.crc32c(replica_id.encode()):08x}{ROUTING_SUFFIX}"


def routing_shard(server_name: str | None) -> int | None:
    """The crc32c a routing name carries (None: no name, or not a routing name)."""
    m = _ROUTING.match(server_name or "")
    return int(m.group(1), 16) if m else None


def _fail(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"not a TLS ClientHello: {why}")


def _hello_bytes(data: bytes | memoryview) -> memoryview:
    """The ClientHello handshake message, reassembled from its records."""
    buf = memoryview(data)
    body = bytearray()
    pos = 0
    need: int | None = None  # the handshake message's length, once known
    while need is None or len(body) < need:
        if pos + 5 > len(buf):
            if pos + 5 > MAX_HELLO:
                raise _fail(f"longer than {MAX_HELLO} bytes")
            raise Incomplete
        ctype, major, length = buf[pos], buf[pos + 1], int.from_bytes(buf[pos + 3 : pos + 5])
        if ctype != _HANDSHAKE or major != 3:
            raise _fail(f"record type {ctype}, version {major}.{buf[pos + 2]}")
        if length == 0 or length > 16384 + 256:
            raise _fail(f"record of {length} bytes")
        if pos + 5 + length > len(buf):
            if pos + 5 + length > MAX_HELLO:
                raise _fail(f"longer than {MAX_HELLO} bytes")
            raise Incomplete
        body += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if need is None and len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                raise _fail(f"handshake message type {body[0]}")
            need = 4 + int.from_bytes(body[1:4])
    return memoryview(bytes(body[:need]))[4:]


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise _fail("a field runs past the end of the ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n))

    def vec(self, n: int) -> memoryview:
        return self.take(self.num(n))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def client_hello_sni(data: bytes | memoryview) -> str | None:
    """The host name in the ClientHello at the start of ``data`` (None: it sends none).

    Raises ``Incomplete`` when ``data`` holds only part of it, and ``RemoteProtocolError``
    when it is not a TLS ClientHello (or a malformed one)."""
    r = _Reader(_hello_bytes(data))
    r.take(2 + 32)  # legacy version, random
    r.vec(1)  # legacy session id
    r.vec(2)  # cipher suites
    r.vec(1)  # compression methods
    if r.left == 0:
        return None  # no extensions at all
    ext = _Reader(r.vec(2))
    while ext.left:
        kind = ext.num(2)
        value = ext.vec(2)
        if kind != _SERVER_NAME:
            continue
        names = _Reader(value)
        names = _Reader(names.vec(2))
        while names.left:
            name_type = names.num(1)
            name = names.vec(2)
            if name_type == _HOST_NAME:
                try:
                    return bytes(name).decode("ascii")
                except UnicodeDecodeError:
                    raise _fail("a server name that is not ASCII") from None
        return None
    return None


__all__ = [
    "MAX_HELLO",
    "Incomplete",
    "client_hello_sni",
    "routing_name",
    "routing_shard",
]
