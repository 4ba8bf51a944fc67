#!/usr/bin/env python3
"""Benchmark: where the CPU of moving 1 MiB over TLS goes, beyond the cipher (issue #16).

The event loops (uvloop, asyncio) run TLS through OpenSSL *memory BIOs*: the sender's
``SSLObject.write`` encrypts into an outgoing BIO, the transport reads the ciphertext out
into a bytes object and writes that to the socket; the receiver reads the socket into a
buffer, writes it into an incoming BIO, and ``SSLObject.read`` decrypts out of it. Every
byte so passes through OpenSSL's record buffer and a BIO (zero-filled as it grows, copied
in, copied out) on top of the cipher. This measures, per MiB, the CPU (``thread_time``) of
a sender thread and a receiver thread over one loopback TCP connection, in four ways:

- ``nosocket``: TLS through memory BIOs in one thread, no socket: the cipher and OpenSSL's
  buffers with every buffer cache-hot;
- ``plain``: ``sendall`` / ``recv_into`` of the payload, no TLS;
- ``bio``: TLS through memory BIOs, as the event loop does it (the receiver reads up to
  256 KiB at a time, as uvloop's TLS transport does, and decrypts into the frame in place,
  as ``framing.StreamBuffer`` lets it);
- ``socket``: TLS with OpenSSL on the socket itself (a blocking ``SSLSocket``: the record
  goes from OpenSSL's buffer to the kernel with no BIO in between; what a transport that
  let OpenSSL own the socket would cost).

``bio`` minus ``plain`` is what TLS costs as the event loop runs it; against ``openssl speed``
(the cipher alone) the rest is the BIOs' copies. Modes run in rotating
order, ``--rounds`` times; medians and min-max are printed and written to ``--json``.
Mutual TLS 1.3 with the test CA's certificates (cargohold's own contexts).

    .venv/bin/python benchmarks/tls_copies.py [--mib 300] [--rounds 3] \\
        [--json benchmarks/results/tls_copies.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import method  # noqa: E402  (benchmarks/method.py)

from cargohold import memtune  # noqa: E402
from tests.support.tls import PKI  # noqa: E402

MIB = 1 << 20
READ = 256 * 1024  # what uvloop's TLS transport reads from the socket at most
MODES = ("nosocket", "plain", "bio", "socket")
SERVER_NAME = "x-r0"


def _pair() -> tuple[socket.socket, socket.socket]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, s


def _bio_pair(sctx: ssl.SSLContext, cctx: ssl.SSLContext) -> tuple[Any, ...]:
    """A handshaken client/server SSLObject pair over memory BIOs."""
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cobj = cctx.wrap_bio(ci, co, server_hostname=SERVER_NAME)
    sobj = sctx.wrap_bio(si, so, server_side=True)
    for _ in range(10):
        for o in (cobj, sobj):
            try:
                o.do_handshake()
            except ssl.SSLWantReadError:
                pass
        si.write(co.read())
        ci.write(so.read())
    return cobj, co, sobj, si


def _decrypt(sobj: Any, frame: memoryview, got: int) -> int:
    """Decrypt what the incoming BIO holds into ``frame[got:]``; the new fill."""
    while got < len(frame):
        try:
            got += sobj.read(len(frame) - got, frame[got:])
        except ssl.SSLWantReadError:
            break
    return got


def no_socket(sctx: ssl.SSLContext, cctx: ssl.SSLContext, n: int) -> dict[str, float]:
    """µs per MiB to encrypt (write, read the ciphertext out) and to decrypt (write it in,
    read the plaintext out), in this thread, no socket."""
    cobj, co, sobj, si = _bio_pair(sctx, cctx)
    payload, frame = os.urandom(MIB), memoryview(bytearray(MIB))
    enc = dec = 0.0
    for _ in range(n):
        t0 = time.thread_time()
        cobj.write(payload)
        wire = co.read()
        t1 = time.thread_time()
        si.write(wire)
        assert _decrypt(sobj, frame, 0) == MIB
        enc, dec = enc + t1 - t0, dec + time.thread_time() - t1
    return {"send": 1e6 * enc / n, "recv": 1e6 * dec / n}


def over_socket(
    mode: str, sctx: ssl.SSLContext, cctx: ssl.SSLContext, n: int, read: int = READ
) -> dict[str, float]:
    """µs of CPU per MiB of a sender and a receiver thread over loopback TCP."""
    c, s = _pair()
    cobj = co = sobj = si = None
    if mode == "socket":
        box: dict[str, ssl.SSLSocket] = {}
        t = threading.Thread(target=lambda: box.update(s=sctx.wrap_socket(s, server_side=True)))
        t.start()
        c = cctx.wrap_socket(c, server_hostname=SERVER_NAME)
        t.join()
        s = box["s"]
    elif mode == "bio":
        cobj, co, sobj, si = _bio_pair(sctx, cctx)
    payload = os.urandom(MIB)
    out: dict[str, float] = {}

    def send() -> None:
        t0 = time.thread_time()
        for _ in range(n):
            if cobj is not None:
                cobj.write(payload)
                c.sendall(co.read())
            else:
                c.sendall(payload)
        out["send"] = 1e6 * (time.thread_time() - t0) / n

    def recv() -> None:
        frame, buf = memoryview(bytearray(MIB)), memoryview(bytearray(read))
        t0 = time.thread_time()
        for _ in range(n):
            got = 0
            while got < MIB:
                if sobj is not None:
                    k = s.recv_into(buf)
                    if not k:
                        raise ConnectionError("sender went away")
                    si.write(buf[:k])
                    got = _decrypt(sobj, frame, got)
                else:
                    k = s.recv_into(frame[got:], MIB - got)
                    if not k:
                        raise ConnectionError("sender went away")
                    got += k
        out["recv"] = 1e6 * (time.thread_time() - t0) / n

    threads = [threading.Thread(target=send), threading.Thread(target=recv)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c.close()
    s.close()
    if len(out) != 2:
        raise RuntimeError(f"{mode}: a thread failed (see above)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=300, help="MiB sent per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--read", type=int, default=READ, help="bytes the TLS receiver reads at once")
    ap.add_argument("--modes", default=",".join(MODES), help="which of " + ",".join(MODES))
    ap.add_argument(
        "--json", default=os.path.join(ROOT, "benchmarks", "results", "tls_copies.json")
    )
    args = ap.parse_args()
    memtune.tune_malloc()  # as the engine and the replica server run
    pki = PKI(os.path.join(tempfile.mkdtemp(prefix="cargohold-tls-copies-"), "pki"))
    sctx = pki.creds("replica", "x").server_context()
    cctx = pki.creds("engine", "y").client_context()
    raw: dict[str, list[float]] = {}
    loads = [os.getloadavg()[0]]
    modes = tuple(m for m in MODES if m in args.modes.split(","))
    for rnd in range(args.rounds):
        for mode in modes[rnd % len(modes) :] + modes[: rnd % len(modes)]:
            if mode == "nosocket":
                r = no_socket(sctx, cctx, args.mib)
            else:
                r = over_socket(mode, sctx, cctx, args.mib, args.read)
            for side, v in r.items():
                raw.setdefault(f"{mode}:{side}", []).append(v)
            loads.append(os.getloadavg()[0])
            print(
                f"round {rnd + 1} {mode:8} send {r['send']:6.0f} µs/MiB  recv {r['recv']:6.0f} "
                f"µs/MiB  load {loads[-1]:.1f}",
                flush=True,
            )
    med = {k: method.spread(v) for k, v in raw.items()}
    print()
    for side in ("send", "recv"):
        m = {mode: med[f"{mode}:{side}"]["median"] for mode in modes}
        if len(m) < len(MODES):
            continue
        extra = m["bio"] - m["plain"]
        print(
            f"{side}: plain {m['plain']:.0f}, TLS through memory BIOs {m['bio']:.0f} "
            f"(+{extra:.0f}), TLS on the socket {m['socket']:.0f}, TLS with no socket "
            f"(one thread, cache-hot) {m['nosocket']:.0f} µs/MiB"
        )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "openssl": ssl.OPENSSL_VERSION,
        "args": vars(args),
        "load": {"min": min(loads), "max": max(loads)},
        "us_per_mib": med,
        "raw": raw,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
