"""The events the NBD server codec gives its owner (``frontend/nbd_connection.py``):
frozen dataclasses, one per thing that happened on the connection.

The option phase (``nbd_handshake``) ends in ``Ready`` or ``Aborted``, or pauses at
``StartTLS``; the transmission phase (``nbd.ServerConnection``) yields ``Request``,
``Invalid`` and ``Disconnect``. Re-exported by ``cargohold.protocol.nbd``.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(slots=True)
class Request:
    """A valid transmission request. ``data`` is the payload of a WRITE (else None). Not
    frozen: one is made per request, and a frozen dataclass's ``__init__`` costs three
    times a plain one's (``object.__setattr__`` per field); nothing changes it."""

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
