#!/usr/bin/env python3
"""The minimal replicated write pipeline whose cost benchmarks/write_floor.py measures.

Two roles, one process each, started by write_floor.py:

    router  speaks just enough NBD for fio's nbd engine (the handshake is cargohold's,
            ``protocol.nbd.ServerConnection``; the transmission phase is read here with
            blocking ``recv_into``); for each WRITE it receives the payload into one reused
            buffer and sends it to each of N stores with one ``sendmsg`` (a small header and
            the payload), then answers fio when all N acknowledged. FLUSH is forwarded (each
            store ``fdatasync``s); other commands are refused with EINVAL.
    store   receives a frame with ``recv_into`` into a reused buffer, computes the CRC32C of
            the payload (the ``crc32c`` package, one call over the whole payload), ``pwrite``s
            it to its file and acknowledges with a 12-byte frame (handle, CRC).

No block map, no generations, no batching, no asyncio: only the copies and system calls no
implementation of the engine's shape can avoid (fio -> router, router -> N stores, store ->
page cache, the CRC). The router is one thread: an epoll loop over fio's socket (a request
is read whole, with MSG_WAITALL, and sent on at once) and the stores' (their
acknowledgements, read many at a time); a store is one thread, one request at a time.

The store wire: request ``>BQQI`` (command 0 write / 1 flush, handle, offset, length) then
``length`` bytes; acknowledgement ``>QI`` (handle, CRC32C or 0).

    python benchmarks/write_floor_pipeline.py store --file F --unix PATH | --port P
    python benchmarks/write_floor_pipeline.py router --port P --size BYTES \\
        --store unix:PATH --store tcp:127.0.0.1:P ...
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import socket
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cargohold.protocol.nbd import ServerConnection  # noqa: E402
from cargohold.protocol.nbd_handshake import S_TRANSMISSION, Export  # noqa: E402

STORE_REQ = struct.Struct(">BQQI")  # command, handle, offset, length
STORE_ACK = struct.Struct(">QI")  # handle, crc
S_WRITE, S_FLUSH = 0, 1

NBD_REQ = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
NBD_REPLY = struct.Struct(">IIQ")  # magic, error, handle
NBD_REQUEST_MAGIC = 0x25609513
NBD_REPLY_MAGIC = 0x67446698
CMD_WRITE, CMD_DISC, CMD_FLUSH = 1, 2, 3
MAX_PAYLOAD = 32 * 2**20


def recv_exact(sock: socket.socket, mv: memoryview) -> bool:
    """Fill ``mv`` from ``sock``; False at end of stream. MSG_WAITALL: one system call
    (and one pass of Python) per frame, not one per socket buffer's worth; the loop only
    for a signal's short read."""
    got, n = 0, len(mv)
    while got < n:
        k = sock.recv_into(mv[got:], n - got, socket.MSG_WAITALL)
        if k == 0:
            return False
        got += k
    return True


def sendmsg_all(sock: socket.socket, parts: list[memoryview | bytes]) -> None:
    """One ``sendmsg`` of all ``parts``; more only if the kernel took fewer bytes (a signal)."""
    sent = sock.sendmsg(parts)
    total = sum(len(p) for p in parts)
    if sent == total:
        return
    rest = memoryview(b"".join(bytes(p) for p in parts))[sent:]  # rare: not the measured path
    sock.sendall(rest)


# --- store ---------------------------------------------------------------------------------
def serve_store(listener: socket.socket, path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    import crc32c  # the package the brief names; imported here: the router does not need it

    buf = bytearray(MAX_PAYLOAD)
    mv = memoryview(buf)
    hdr = bytearray(STORE_REQ.size)
    hmv = memoryview(hdr)
    print("store ready", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            while recv_exact(conn, hmv):
                cmd, handle, offset, length = STORE_REQ.unpack(hdr)
                crc = 0
                if cmd == S_WRITE:
                    data = mv[:length]
                    if not recv_exact(conn, data):
                        break
                    crc = crc32c.crc32c(data)
                    done = os.pwrite(fd, data, offset)
                    if done != length:
                        raise OSError(errno.EIO, f"short pwrite {done} of {length}")
                else:
                    os.fdatasync(fd)
                conn.sendall(STORE_ACK.pack(handle, crc))


# --- router ---------------------------------------------------------------------------------
class Router:
    """fio's connection in, N store connections out (module docstring). One thread: an
    epoll loop over fio's socket and the stores'; no locks, no hand-offs of the GIL."""

    def __init__(self, stores: list[socket.socket], size: int) -> None:
        self.stores = stores
        self.size = size
        self.pending: dict[int, int] = {}  # NBD handle -> acknowledgements still due
        self.by_fd = {s.fileno(): s for s in stores}
        self.poll = select.epoll()
        for s in stores:
            self.poll.register(s.fileno(), select.EPOLLIN)
        self.acks = bytearray(STORE_ACK.size * 64)  # acknowledgements read in one recv
        self.partial = {s.fileno(): b"" for s in stores}  # a frame cut by a short read

    def handshake(self, conn: socket.socket) -> bool:
        nbd = ServerConnection(Export(name="", multi_conn=False), lambda: self.size)
        conn.sendall(nbd.greeting())
        while nbd.state != S_TRANSMISSION:
            data = conn.recv(65536)
            if not data:
                return False
            nbd.feed(data)
            out = nbd.data_to_send()
            if out:
                conn.sendall(out)
        return True

    def _read_acks(self, fd: int, conn: socket.socket) -> None:
        k = self.by_fd[fd].recv_into(self.acks, len(self.acks), socket.MSG_DONTWAIT)
        if k == 0:
            os._exit(1)  # a store went away: the run is over
        data = self.partial[fd] + self.acks[:k] if self.partial[fd] else memoryview(self.acks)[:k]
        whole = len(data) - len(data) % STORE_ACK.size
        self.partial[fd] = bytes(data[whole:])
        for handle, _crc in STORE_ACK.iter_unpack(data[:whole]):
            left = self.pending[handle] - 1
            if left:
                self.pending[handle] = left
            else:
                del self.pending[handle]
                conn.sendall(NBD_REPLY.pack(NBD_REPLY_MAGIC, 0, handle))

    def serve(self, conn: socket.socket) -> None:
        hdr = bytearray(NBD_REQ.size)
        hmv = memoryview(hdr)
        buf = bytearray(MAX_PAYLOAD)
        mv = memoryview(buf)
        n = len(self.stores)
        client = conn.fileno()
        self.poll.register(client, select.EPOLLIN)
        try:
            while True:
                for fd, _ev in self.poll.poll():
                    if fd != client:
                        self._read_acks(fd, conn)
                    elif not self._request(conn, hmv, hdr, mv, n):
                        return
        finally:
            self.poll.unregister(client)

    def _request(
        self, conn: socket.socket, hmv: memoryview, hdr: bytearray, mv: memoryview, n: int
    ) -> bool:
        """One request from fio, fanned out; False: the connection ends."""
        if not recv_exact(conn, hmv):
            return False
        magic, _flags, cmd, handle, offset, length = NBD_REQ.unpack(hdr)
        if magic != NBD_REQUEST_MAGIC:
            return False
        if cmd == CMD_WRITE:
            if length > MAX_PAYLOAD:
                return False
            data = mv[:length]
            if not recv_exact(conn, data):
                return False
            frame = STORE_REQ.pack(S_WRITE, handle, offset, length)
            self.pending[handle] = n
            for s in self.stores:
                sendmsg_all(s, [frame, data])  # the buffer is free once every send returned
        elif cmd == CMD_FLUSH:
            self.pending[handle] = n
            for s in self.stores:
                s.sendall(STORE_REQ.pack(S_FLUSH, handle, 0, 0))
        elif cmd == CMD_DISC:
            return False
        else:
            conn.sendall(NBD_REPLY.pack(NBD_REPLY_MAGIC, errno.EINVAL, handle))
        return True


def connect(spec: str) -> socket.socket:
    kind, _, where = spec.partition(":")
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(where)
        return s
    host, _, port = where.rpartition(":")
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    st = sub.add_parser("store")
    st.add_argument("--file", required=True)
    st.add_argument("--unix", default=None)
    st.add_argument("--port", type=int, default=0)
    ro = sub.add_parser("router")
    ro.add_argument("--port", type=int, required=True)
    ro.add_argument("--size", type=int, required=True)
    ro.add_argument("--store", action="append", required=True, help="unix:PATH or tcp:HOST:PORT")
    args = ap.parse_args(argv)
    if args.role == "store":
        if args.unix:
            lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lis.bind(args.unix)
        else:
            lis = socket.socket()
            lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lis.bind(("127.0.0.1", args.port))
        lis.listen(4)
        serve_store(lis, args.file)
        return
    router = Router([connect(s) for s in args.store], args.size)
    lis = socket.socket()
    lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lis.bind(("127.0.0.1", args.port))
    lis.listen(4)
    print(f"router listening on 127.0.0.1:{args.port}", flush=True)
    while True:
        conn, _ = lis.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            if router.handshake(conn):
                router.serve(conn)


if __name__ == "__main__":
    main()
