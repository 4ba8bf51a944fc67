"""Growing a kernel NBD device in place, for NodeExpandVolume on nodes with the kernel's
NBD client (``mounter.Attachment.grow``).

``nbd-client`` configures a device over generic netlink by default (the kernel then owns
the connection, so it outlives a restart of the node plugin); such a device refuses
configuration ioctls and is resized with NBD_CMD_RECONFIGURE carrying NBD_ATTR_SIZE_BYTES.
A device configured with ioctls (``nbd-client -L``) takes NBD_SET_SIZE. ``resize`` tries
the ioctl and falls back to netlink. The message encoders are pure (tested in
tests/unit/csi/test_nbd_kernel.py); the machines we test on have no nbd module, so the
calls themselves are untested here.

Constants: linux/nbd.h and linux/nbd-netlink.h, linux/netlink.h, linux/genetlink.h.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import struct

from cargohold.errors import CargoholdError

NBD_SET_SIZE = 0xAB02
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NBD_CMD_RECONFIGURE = 3
NBD_ATTR_INDEX = 1
NBD_ATTR_SIZE_BYTES = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENL = struct.Struct("=BBH")  # cmd, version, reserved


class ResizeError(CargoholdError):
    """The kernel did not resize the NBD device."""


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes(-n % 4)


def message(msg_type: int, cmd: int, attrs: bytes, seq: int, version: int = 1) -> bytes:
    """A generic netlink request (with an ACK asked for)."""
    body = _GENL.pack(cmd, version, 0) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def family_request(seq: int) -> bytes:
    return message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _attr(CTRL_ATTR_FAMILY_NAME, b"nbd\0"), seq)


def resize_request(family: int, index: int, size: int, seq: int) -> bytes:
    attrs = _attr(NBD_ATTR_INDEX, struct.pack("=I", index))
    attrs += _attr(NBD_ATTR_SIZE_BYTES, struct.pack("=Q", size))
    return message(family, NBD_CMD_RECONFIGURE, attrs, seq)


def parse(data: bytes) -> list[tuple[bool, int, dict[int, bytes]]]:
    """The messages of one datagram: (is an NLMSG_ERROR, its errno (0: an ACK), the genl
    attributes of a reply)."""
    out: list[tuple[bool, int, dict[int, bytes]]] = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, msg_type, _, _, _ = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            break
        if msg_type == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + _NLMSG.size)
            out.append((True, -err, {}))
        else:
            attrs: dict[int, bytes] = {}
            pos = off + _NLMSG.size + _GENL.size
            while pos + 4 <= off + length:
                n, kind = struct.unpack_from("=HH", data, pos)
                if n < 4:
                    break
                attrs[kind & 0x3FFF] = data[pos + 4 : pos + n]
                pos += (n + 3) & ~3
            out.append((False, 0, attrs))
        off += (length + 3) & ~3
    return out


def _talk(sock: socket.socket, request: bytes) -> dict[int, bytes]:
    """Send ``request``; the attributes of its replies, once the ACK comes."""
    sock.send(request)
    got: dict[int, bytes] = {}
    while True:
        for is_error, err, attrs in parse(sock.recv(65536)):
            if is_error:
                if err:
                    raise ResizeError(f"netlink: {os.strerror(err)}")
                return got
            got.update(attrs)


def resize(device: str, size: int) -> None:
    """Make the kernel NBD ``device`` (``/dev/nbdN``) ``size`` bytes, in place."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, NBD_SET_SIZE, size)
        return
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: configured over netlink
            raise ResizeError(f"NBD_SET_SIZE on {device}: {e}") from None
    finally:
        os.close(fd)
    m = re.fullmatch(r"/dev/nbd(\d+)", device)
    if not m:
        raise ResizeError(f"{device} is not a /dev/nbdN device")
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as sock:
            sock.settimeout(10)
            sock.bind((0, 0))
            attrs = _talk(sock, family_request(1))
            if CTRL_ATTR_FAMILY_ID not in attrs:
                raise ResizeError("the kernel has no nbd netlink family")
            (family,) = struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])
            _talk(sock, resize_request(family, int(m.group(1)), size, 2))
    except OSError as e:
        raise ResizeError(f"NBD_CMD_RECONFIGURE on {device}: {e}") from None
