"""Connection floods shared by tests/integration/test_floods.py and benchmarks/floods.py."""

from __future__ import annotations

import socket

from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op


def flood_replica_server(port: int, sources: list[str], each: int) -> list[socket.socket]:
    """``each`` connections from every address in ``sources`` to the replica server on
    127.0.0.1:``port``: every other one sends a HELLO and then nothing, the rest send nothing
    at all. Stops trying an address after 20 failures in a row (a server out of descriptors
    no longer accepts). The caller closes the sockets."""
    hello = b"".join(bytes(b) for b in wire.encode_request(Op.HELLO, 1, payload=b"{}"))
    out: list[socket.socket] = []
    for src in sources:
        failed = 0
        for i in range(each):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.5)
            try:
                s.bind((src, 0))
                s.connect(("127.0.0.1", port))
                if i % 2:
                    s.sendall(hello)
                out.append(s)
                failed = 0
            except OSError:
                s.close()
                failed += 1
                if failed >= 20:
                    break
    return out
