#!/usr/bin/env python3
"""Benchmark: the receiving side of large writes, alone: CPU per frame on a real socket.

A child process sends a stream of WRITE frames (1 MiB payloads by default) over loopback
TCP; this process receives them as the engine's NBD connection and the replica server's
session do (``get_buffer`` / ``recv_into`` / ``buffer_updated`` of the codec: the NBD
``ServerConnection`` or the replica wire's ``RequestDecoder``), checks every payload's
length and the frames' count, and reports the receiving thread's CPU (``thread_time``:
the ``recv`` system calls' copies and the codec's Python and allocations) per frame. No
event loop, no device, no replicas: what ``framing.StreamBuffer`` costs a large write,
steadier than the whole system's figures on a shared machine. Which tree is measured is
whichever ``cargohold`` is imported: run it with ``PYTHONPATH=$TREE`` to compare trees.

    PYTHONPATH=$TREE .venv/bin/python benchmarks/write_path_receive.py \\
        [--codec nbd|replica] [--frames 3000] [--payload 1048576] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import struct
import time

from cargohold.protocol import framing, nbd
from cargohold.protocol import replica_wire as wire


def frame(codec: str, i: int, payload: bytes) -> bytes:
    if codec == "nbd":
        hdr = struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, i, 0, len(payload))
        return hdr + payload
    parts = wire.encode_request(wire.Op.WRITE, i + 1, 0, len(payload), payload, 0, i + 1)
    return b"".join(bytes(p) for p in parts)


def decoder(codec: str) -> nbd.ServerConnection | wire.RequestDecoder:
    """A codec past its handshake, ready for WRITE frames."""
    if codec == "replica":
        return wire.RequestDecoder()
    c = nbd.ServerConnection(nbd.Export(name="vol"), lambda: 1 << 40)
    c.greeting()
    c.feed(struct.pack(">I", 3))
    body = struct.pack(">I", 3) + b"vol" + struct.pack(">H", 0)
    events = c.feed(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, len(body)) + body)
    assert isinstance(events[-1], nbd.Ready)
    c.data_to_send()
    return c


def one_round(codec: str, frames: int, size: int) -> float:
    """Receive ``frames`` frames; -> this thread's CPU µs per frame."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    payload = os.urandom(size)
    pid = os.fork()
    if pid == 0:  # the sender
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            blob = b"".join(frame(codec, i, payload) for i in range(8))
            for _ in range(frames // 8):
                s.sendall(blob)
            s.close()
        finally:
            os._exit(0)
    conn, _ = lsock.accept()
    lsock.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    d = decoder(codec)
    get = d.get_buffer if codec == "nbd" else lambda: d.get_buffer(0)
    got = 0
    t0 = time.thread_time()
    while True:
        buf = get()
        n = conn.recv_into(buf)
        if n == 0:
            break
        for ev in d.buffer_updated(n):
            got += 1
            data = ev.data if codec == "nbd" else ev.payload
            if len(data) != size:
                raise SystemExit(f"frame {got}: {len(data)} bytes, not {size}")
    cpu = time.thread_time() - t0
    conn.close()
    os.waitpid(pid, 0)
    want = frames // 8 * 8
    if got != want:
        raise SystemExit(f"received {got} frames of {want}")
    return cpu / got * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", choices=["nbd", "replica"], default="nbd")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--payload", type=int, default=1 << 20, help="bytes per write (1 MiB)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    tree = os.path.dirname(os.path.dirname(os.path.abspath(framing.__file__)))
    runs = [one_round(args.codec, args.frames, args.payload) for _ in range(args.repeat)]
    print(
        f"{args.codec} {args.payload} B x {args.frames}: receiver CPU µs/frame "
        f"median {statistics.median(runs):.1f} runs {', '.join(f'{r:.1f}' for r in runs)} "
        f"(cargohold from {tree}; load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
