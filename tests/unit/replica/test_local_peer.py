"""The replica server's unix socket: who the kernel says the peer is, and the scope an
engine's HELLO takes on there (cargohold/replica/local_peer.py)."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from cargohold.errors import InvalidArgument, PermissionDenied
from cargohold.replica.local_peer import declared_engine, peer_credentials, unix_peer
from cargohold.security.identity import Identity, Role


def test_the_kernel_names_the_peer():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.geteuid(), os.getegid())
        assert unix_peer(a) == f"unix pid {os.getpid()}"


class _Peer:
    """A socket whose peer runs as ``uid`` (what SO_PEERCRED would say)."""

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        assert (level, opt) == (socket.SOL_SOCKET, socket.SO_PEERCRED)
        return struct.pack("3i", 4242, self.uid, self.uid)


def test_only_the_servers_user_or_root_is_admitted():
    assert unix_peer(_Peer(0)) == "unix pid 4242"
    assert unix_peer(_Peer(os.geteuid())) == "unix pid 4242"
    with pytest.raises(PermissionDenied, match="uid 65534"):
        unix_peer(_Peer(65534))


def test_an_engine_declares_its_volume_and_cannot_widen_it():
    ident = declared_engine({"engine": "pvc-1"}, None, "c1")
    assert ident == Identity("c1", Role.ENGINE, "pvc-1")
    assert declared_engine({"engine": "pvc-1"}, ident, "c1") == ident  # again: the same
    with pytest.raises(PermissionDenied, match="engine/pvc-1"):
        declared_engine({"engine": "pvc-2"}, ident, "c1")
    assert declared_engine({"engine": "v"}, None, None).cluster == "local"  # --plaintext


@pytest.mark.parametrize("bad", [None, 3, "", "../etc", "a/b", "x" * 300])
def test_a_bad_volume_name_is_a_clear_error(bad):
    with pytest.raises(InvalidArgument):
        declared_engine({"engine": bad}, None, "c1")
