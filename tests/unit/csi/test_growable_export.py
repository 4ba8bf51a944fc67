"""The growable export the CSI node attaches through nbdfuse (``protocol.nbd``): NAME +
GROWABLE_SUFFIX is the same volume, announced at the ceiling so that a client whose size
is fixed at connect can follow an online expansion, while every request is still checked
against the live size (I/O past the volume's real end fails, before and after it grows)."""

from __future__ import annotations

import struct

import pytest

from cargohold.errors import RemoteProtocolError
from cargohold.protocol import nbd

MiB = 1 << 20


def opt(option: int, body: bytes = b"") -> bytes:
    return struct.pack(">QII", nbd.IHAVEOPT, option, len(body)) + body


def info_body(name: str) -> bytes:
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", 0)


def connect(export: nbd.Export, size: list[int]) -> nbd.ServerConnection:
    c = nbd.ServerConnection(export, lambda: size[0])
    c.greeting()
    assert c.feed(struct.pack(">I", 3)) == []
    return c


def go_size(c: nbd.ServerConnection, name: str) -> int:
    """NBD_OPT_GO for ``name``: the size it announces."""
    events = c.feed(opt(nbd.OPT_GO, info_body(name)))
    assert isinstance(events[-1], nbd.Ready), events
    data = c.data_to_send()
    # the first reply is NBD_INFO_EXPORT: u16 type, u64 size, u16 flags
    _, _, rtype, length = struct.unpack_from(">QIII", data, 0)
    assert rtype == nbd.REP_INFO and length == 12
    info, size, _ = struct.unpack_from(">HQH", data, 20)
    assert info == nbd.INFO_EXPORT
    return int(size)


def request(cmd: int, offset: int, length: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, cmd, 9, offset, length) + payload


def test_growable_name_announces_the_ceiling_and_checks_the_live_size() -> None:
    size = [64 * MiB]
    export = nbd.Export(name="vol", growable=True)
    c = connect(export, size)
    assert go_size(c, "vol" + nbd.GROWABLE_SUFFIX) == nbd.GROWABLE_CEILING
    # past the real end: refused (ENOSPC for writes, EINVAL for reads), inside: served
    ev = c.feed(request(nbd.CMD_WRITE, 64 * MiB, 4096, bytes(4096)))
    assert isinstance(ev[0], nbd.Invalid) and ev[0].errno == nbd.ENOSPC
    ev = c.feed(request(nbd.CMD_READ, 100 * MiB, 4096))
    assert isinstance(ev[0], nbd.Invalid) and ev[0].errno == nbd.EINVAL
    ev = c.feed(request(nbd.CMD_READ, 64 * MiB - 4096, 4096))
    assert isinstance(ev[0], nbd.Request)
    # the volume grows: the same connection may now use the new space
    size[0] = 128 * MiB
    ev = c.feed(request(nbd.CMD_WRITE, 64 * MiB, 4096, bytes(4096)))
    assert isinstance(ev[0], nbd.Request)


def test_plain_name_announces_the_live_size() -> None:
    size = [64 * MiB]
    c = connect(nbd.Export(name="vol", growable=True), size)
    assert go_size(c, "vol") == 64 * MiB


def test_a_volume_larger_than_the_ceiling_is_announced_at_its_size() -> None:
    size = [nbd.GROWABLE_CEILING + 4096]
    c = connect(nbd.Export(name="vol", growable=True), size)
    assert go_size(c, "vol" + nbd.GROWABLE_SUFFIX) == size[0]


def test_without_growable_the_name_is_unknown() -> None:
    c = connect(nbd.Export(name="vol"), [MiB])
    c.feed(opt(nbd.OPT_GO, info_body("vol" + nbd.GROWABLE_SUFFIX)))
    _, _, rtype, _ = struct.unpack_from(">QIII", c.data_to_send(), 0)
    assert rtype == nbd.REP_ERR_UNKNOWN
    c = connect(nbd.Export(name="vol"), [MiB])
    name = ("vol" + nbd.GROWABLE_SUFFIX).encode()
    with pytest.raises(RemoteProtocolError):
        c.feed(opt(nbd.OPT_EXPORT_NAME, name))


def test_export_name_option_announces_the_ceiling_too() -> None:
    c = connect(nbd.Export(name="vol", growable=True), [MiB])
    c.feed(opt(nbd.OPT_EXPORT_NAME, ("vol" + nbd.GROWABLE_SUFFIX).encode()))
    size, _ = struct.unpack_from(">QH", c.data_to_send(), 0)
    assert size == nbd.GROWABLE_CEILING
