"""A sans-I/O NBD server connection past its handshake (``NBD_OPT_GO`` for export "vol"),
ready for transmission-phase frames: for the codec's receive tests."""

from __future__ import annotations

import struct

from cargohold.protocol import nbd


def ready_server(size: int = 64 << 20, name: str = "vol") -> nbd.ServerConnection:
    c = nbd.ServerConnection(nbd.Export(name=name), lambda: size)
    c.greeting()
    c.feed(struct.pack(">I", 3))
    body = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    events = c.feed(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, len(body)) + body)
    assert isinstance(events[-1], nbd.Ready)
    c.data_to_send()
    return c
