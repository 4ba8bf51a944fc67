"""The one exception tree of cargohold.

Two families matter most on the data path (STYLE.md, convention 5):

- ``ProtocolError``: a peer broke the protocol. The only safe answer is to drop that
  connection; the daemon keeps serving everybody else.
- ``RequestError``: this one request failed. Reply with an error status and go on.

Every ``RequestError`` carries a wire ``status`` code (see docs/formats/replica-wire.md);
mapping to NBD errno, gRPC status or HTTP status happens only at the edges.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, ClassVar


class CargoholdError(Exception):
    """Root of every error cargohold raises on purpose."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


# --- the peer broke the protocol: drop the connection -------------------------------


class ProtocolError(CargoholdError):
    """A frame or message violates the protocol; the connection must be closed."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something the protocol forbids (its fault)."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (our fault)."""


# --- formats on disk ---------------------------------------------------------------


class FormatError(CargoholdError):
    """An on-disk structure has a wrong magic, version, size or checksum."""

    exit_code = 3


# --- this request failed: reply with an error and go on -------------------------------


class RequestError(CargoholdError):
    """One request failed; the connection and the daemon go on.

    ``status`` is the code on the replica wire; ``errno`` is what an NBD frontend sends.
    """

    status: ClassVar[int] = 5
    errno: ClassVar[int] = _errno.EIO


class InvalidArgument(RequestError):
    status = 22
    errno = _errno.EINVAL


class NotFound(RequestError):
    status = 2
    errno = _errno.ENOENT


class AlreadyExists(RequestError):
    status = 17
    errno = _errno.EEXIST


class NoSpace(RequestError):
    """The disk under a replica is full. Nothing acknowledged earlier is affected."""

    status = 28
    errno = _errno.ENOSPC


class ReplicaIOError(RequestError):
    status = 5
    errno = _errno.EIO


class Unsupported(RequestError):
    status = 95
    errno = _errno.EOPNOTSUPP


class Busy(RequestError):
    status = 16
    errno = _errno.EBUSY


class NotOpen(RequestError):
    """A data request arrived on a connection that has not opened a replica."""

    status = 1002
    errno = _errno.EINVAL


class Fenced(RequestError):
    """The request's epoch is older than the newest epoch the replica has accepted.

    A newer engine owns the replica; the old one must stop (invariant 3).
    """

    status = 1000
    errno = _errno.EROFS


class ChecksumError(RequestError):
    """Stored data does not match its CRC32C. ``detail['blocks']`` names the bad blocks."""

    status = 1001
    errno = _errno.EIO


class WrongState(RequestError):
    """The request does not fit the object's state now (e.g. revert while attached)."""

    status = 1003
    errno = _errno.EBUSY


class VersionSkew(WrongState):
    """A node agent's version is too far from the manager's (more than one minor version
    apart, or another major version): the manager refuses its registration and heartbeats
    (HTTP 409) until one of them is upgraded (docs/upgrades.md)."""


class WrongDataKey(RequestError):
    """An encrypted volume's engine holds a data key that does not authenticate the
    volume's blocks (another volume's key, or a wrong one): it refuses every write, so
    nothing is ever written with it (docs/encryption.md, "The key check")."""

    status = 1006
    errno = _errno.EACCES


class Unauthenticated(RequestError):
    """The request carries no credential the cluster accepts: no certificate or token, one
    from another cluster's CA, expired or revoked (HTTP 401)."""

    status = 1005
    errno = _errno.EACCES


class PermissionDenied(RequestError):
    """The caller is known but its role or tenant may not do this (HTTP 403)."""

    status = 13
    errno = _errno.EACCES


class KeyUnavailable(WrongState):
    """A volume's key-encryption key cannot be used now: its key file is missing or not a
    key, the KMS does not answer or does not know the key id, or the volume's data key was
    destroyed (``volume delete --shred``). Nothing was written (HTTP 409; docs/keys.md)."""


class KeyRefused(WrongState):
    """A wrapped data key does not unwrap under the key-encryption key it names: another
    key under that name, or a tampered record. Nothing was written (HTTP 409)."""


class Unschedulable(NoSpace):
    """Placement is impossible; the message says why (nodes, zones, capacity, tags)."""

    status = 1004


class TargetError(RequestError):
    """A backup target (object store or filesystem path) failed a request: I/O error,
    unreachable, refused. The message names the target (never its credentials)."""

    status = 5
    errno = _errno.EIO


class ManagerUnavailable(CargoholdError):
    """No manager answered (the control plane is down or unreachable), or the manager
    cannot use its state store (unreachable, or damaged: the message names the file or
    the record)."""

    exit_code = 3


class StateStoreDamaged(ManagerUnavailable):
    """The state store answers but what it holds is broken: a damaged SQLite page, a record
    that is not valid JSON or not a valid record. ``detail['key']`` names the record (absent
    when the damage is the file's). The manager answers 503 until it is repaired."""


# --- an HTTP request the manager's API cannot take (mapped to a status in api.py) ------


class UnsupportedMediaType(InvalidArgument):
    """A request body that is not JSON (HTTP 415)."""


class PayloadTooLarge(InvalidArgument):
    """A request body above the manager's bound (HTTP 413)."""


class MethodNotAllowed(InvalidArgument):
    """A route that exists, asked with a method it does not take (HTTP 405)."""


class ConfigError(CargoholdError):
    """Bad settings or command-line input."""

    exit_code = 2


# --- backup targets (cargohold/backup/): object stores and directories ----------------


class TargetUnreachable(TargetError):
    """The backup target did not answer within its timeouts and retries: endpoint down,
    wrong host or port, network cut, TLS not trusted (the message says which)."""


# every wire status back to its class; RequestError shares status 5 with ReplicaIOError, which
# is what a peer means by it (docs/formats/replica-wire.md, "Status codes", is tested against this)
STATUS_TO_ERROR: dict[int, type[RequestError]] = {
    cls.status: cls
    for cls in (
        ReplicaIOError,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        NoSpace,
        Unsupported,
        Busy,
        NotOpen,
        Fenced,
        ChecksumError,
        WrongState,
        Unschedulable,
        Unauthenticated,
        PermissionDenied,
        WrongDataKey,
    )
}


def error_for_status(status: int, message: str, **detail: Any) -> RequestError:
    """Rebuild the error a remote peer reported (client side of the wire)."""
    cls = STATUS_TO_ERROR.get(status, RequestError)
    return cls(message, **detail)
