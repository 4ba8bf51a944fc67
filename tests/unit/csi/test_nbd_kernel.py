"""The netlink messages that resize a kernel NBD device (csi/nbd_kernel.py), checked
byte by byte against linux/netlink.h, genetlink.h and nbd-netlink.h. The resize itself
needs the nbd module, which the test machines lack."""

from __future__ import annotations

import struct

import pytest

from cargohold.csi import nbd_kernel as K


def test_family_request() -> None:
    m = K.family_request(seq=7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", m)
    assert (length, kind, flags, seq, pid) == (len(m), 0x10, 0x5, 7, 0)
    assert struct.unpack_from("=BBH", m, 16) == (K.CTRL_CMD_GETFAMILY, 1, 0)
    n, attr = struct.unpack_from("=HH", m, 20)
    assert (n, attr) == (8, K.CTRL_ATTR_FAMILY_NAME) and m[24:28] == b"nbd\0"
    assert len(m) % 4 == 0


def test_resize_request() -> None:
    m = K.resize_request(family=29, index=3, size=5 << 30, seq=2)
    length, kind, _, seq, _ = struct.unpack_from("=IHHII", m)
    assert (length, kind, seq) == (len(m), 29, 2)
    assert struct.unpack_from("=BBH", m, 16)[0] == K.NBD_CMD_RECONFIGURE
    assert struct.unpack_from("=HHI", m, 20) == (8, K.NBD_ATTR_INDEX, 3)
    assert struct.unpack_from("=HHQ", m, 28) == (12, K.NBD_ATTR_SIZE_BYTES, 5 << 30)
    assert len(m) == 40


def reply(kind: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", 1, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 1, 0) + body


def ack(err: int = 0) -> bytes:
    return struct.pack("=IHHII", 36, K.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", err) + bytes(16)


def test_parse_a_reply_and_its_ack_in_one_datagram() -> None:
    family = struct.pack("=HHH", 6, K.CTRL_ATTR_FAMILY_ID, 29) + bytes(2)
    name = struct.pack("=HH", 8, K.CTRL_ATTR_FAMILY_NAME) + b"nbd\0"
    got = K.parse(reply(0x10, family + name) + ack())
    assert got[0][0] is False and got[0][2][K.CTRL_ATTR_FAMILY_ID][:2] == struct.pack("=H", 29)
    assert got[0][2][K.CTRL_ATTR_FAMILY_NAME] == b"nbd\0"
    assert got[1] == (True, 0, {})
    assert K.parse(ack(-22)) == [(True, 22, {})]


def test_resize_of_something_else_fails_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "not-nbd"
    f.write_bytes(b"")
    with pytest.raises(K.ResizeError):
        K.resize(str(f), 1 << 30)
