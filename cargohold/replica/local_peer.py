"""Who is on the other end of the replica server's unix socket, and what it may do there.

The unix socket (``--unix``; the node agent puts it in a directory of mode 0700 of its own,
docs/security.md, "The local replica link") carries no TLS: the engine of a volume
attached to this node reaches its local replica through it, and nothing crosses the
network. Two checks stand in for the certificate (called by ``session.Session``):

- ``unix_peer``: the kernel's word on the peer (SO_PEERCRED: pid, uid, gid). Only the
  server's own user (root on a node) or root is admitted: a second wall behind the
  socket's mode 0600, so a socket whose mode or directory was loosened by mistake still
  serves no one else. The pid names the peer in the log.
- ``declared_engine``: an engine's HELLO on the socket says which volume it runs
  (``"engine": V``); from then on the session is ``engine/V`` and authorized as that
  certificate would be over TLS (``security.policy``): OPEN of V's replicas only, no
  CREATE or DELETE, LIST shows V's replicas. It is a scope the engine takes on, not a
  proof: a process that can connect to this socket runs as root on the node and can read
  every replica's files and every engine's key anyway. What it buys is that a wrong
  replica id in an engine's arguments is refused, as over TLS, instead of fencing
  another volume's engine. A session that declares nothing is served as the agent.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from cargohold.errors import InvalidArgument, PermissionDenied
from cargohold.security.identity import Identity, Role, check_name

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of a unix socket's peer, as the kernel recorded them at connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def unix_peer(sock: Any) -> str:
    """The peer of an accepted unix connection, named for the log ("unix pid 1234"), or
    PermissionDenied when it runs as neither the server's user nor root."""
    pid, uid, _ = peer_credentials(sock)
    if uid not in (0, os.geteuid()):
        raise PermissionDenied(
            f"unix peer pid {pid} runs as uid {uid}: only uid {os.geteuid()} (this server's "
            "user) or root may use the replica server's unix socket"
        )
    return f"unix pid {pid}"


def declared_engine(
    args: dict[str, Any], current: Identity | None, cluster: str | None
) -> Identity:
    """The identity a unix session takes on with HELLO's ``engine`` (a volume name):
    ``engine/<volume>`` of the server's cluster. A session scoped already keeps its scope
    (the same volume again is fine; another is refused: a scope never widens)."""
    volume = args.get("engine")
    if not isinstance(volume, str):
        raise InvalidArgument(f"engine must be a volume name, got {volume!r}")
    check_name("volume", volume)
    ident = Identity(cluster or "local", Role.ENGINE, volume)
    if current is not None and current != ident:
        raise PermissionDenied(f"this connection is {current} already; it cannot become {ident}")
    return ident
