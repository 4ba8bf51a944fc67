#!/usr/bin/env python3
"""Connection floods against real processes (issue #14; docs/operations.md, "Connection
limits"): what an engine and a replica server hold, how much memory they take, and whether
a well-behaved client still gets in. Loopback only; every socket is closed at the end.

- engine: five floods of 1,100 NBD connections idle after the handshake, from 18
  addresses (127.0.4.x); after each, a client from 127.0.0.1 connects.
- replica server: 10,000 connections from 20 addresses (127.0.5.x), every other one sending
  a HELLO; then a LIST from 127.0.0.1.

``--tree DIR`` runs the processes from another checkout's ``cargohold`` package (to compare
with an older version side by side), e.g.::

    git archive 8ef3d92 cargohold | tar -x -C /tmp/old
    .venv/bin/python benchmarks/floods.py --tree /tmp/old
    .venv/bin/python benchmarks/floods.py

Needs a descriptor limit of at least 12,000 for this process (``ulimit -n``).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.protocol import replica_wire as wire  # noqa: E402
from cargohold.protocol.replica_wire import Op  # noqa: E402
from tests.support.floods import flood_replica_server  # noqa: E402
from tests.support.nbd_clients import nbd_handshake  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def nbd_client(port: int, source: str) -> socket.socket | None:
    """A fixed-newstyle handshake (OPT_GO) from ``source``; None if refused."""
    return nbd_handshake(port, source, timeout=1.0)


class Procs:
    def __init__(self, tree: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="floods-")
        self.env = dict(os.environ, PYTHONPATH=tree, CARGOHOLD_LOG="WARNING")
        self.all: list[subprocess.Popen] = []

    def launch(self, args: list[str], pattern: str, name: str) -> tuple[subprocess.Popen, int]:
        log = os.path.join(self.dir, f"{name}.log")
        with open(log, "w") as f:
            p = subprocess.Popen(
                [sys.executable, "-m", "cargohold", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.dir,  # not the checkout: ``-m`` would import it first
            )
        self.all.append(p)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(log) as f:
                m = re.search(pattern, f.read())
            if m:
                return p, int(m.group(1))
            time.sleep(0.05)
        raise SystemExit(f"{name} did not start; see {log}")

    def stop(self) -> None:
        for p in self.all:
            p.terminate()
        for p in self.all:
            p.wait(30)


def replica_server(procs: Procs, name: str) -> tuple[subprocess.Popen, int]:
    disk = os.path.join(procs.dir, f"{name}-disk")
    os.mkdir(disk)
    return procs.launch(
        ["replica-server", "--listen", "127.0.0.1:0", "--disk", disk, "--plaintext"],
        r"listening on [^ ]+:(\d+)",
        name,
    )


def call(port: int, op: int, args: dict | None = None) -> None:  # type: ignore[type-arg]
    payload = wire.dump_json(args or {})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(bytes(b) for b in wire.encode_request(op, 1, payload=payload)))
        head = s.recv(wire.REPLY.size)
        assert len(head) == wire.REPLY.size, "no answer"


def engine_flood(procs: Procs) -> str:
    _, rport = replica_server(procs, "rs-engine")
    call(rport, Op.CREATE, {"replica": "m-r1", "size": 16 << 20})
    eng, port = procs.launch(
        [
            "engine",
            "--volume",
            "m",
            "--epoch",
            "1",
            "--replica",
            f"m-r1@127.0.0.1:{rport}",
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
        ],
        r"nbd server listening on 127\.0\.0\.1:(\d+)",
        "engine",
    )
    time.sleep(6)  # settled and trimmed
    base, peaks, refused = rss_mib(eng.pid), [], 0
    for _ in range(5):
        flood = [
            s
            for i in range(18)
            for _ in range(61)
            if (s := nbd_client(port, f"127.0.4.{i + 1}")) is not None
        ]
        peaks.append(rss_mib(eng.pid))
        c = nbd_client(port, "127.0.0.1")
        refused += c is None
        if c is not None:
            c.close()
        for s in flood:
            s.close()
    time.sleep(8)
    return (
        f"engine: RSS {base:.1f} MiB before, peaks {', '.join(f'{p:.1f}' for p in peaks)} MiB, "
        f"{rss_mib(eng.pid):.1f} MiB 8 s after; a new client refused in {refused} of 5 rounds"
    )


def replica_server_flood(procs: Procs) -> str:
    rs, port = replica_server(procs, "rs-flood")
    time.sleep(1)
    base = rss_mib(rs.pid)
    t = time.monotonic()
    flood = flood_replica_server(port, [f"127.0.5.{i}" for i in range(1, 21)], 500)
    took = time.monotonic() - t
    time.sleep(2)
    peak, fds = rss_mib(rs.pid), len(os.listdir(f"/proc/{rs.pid}/fd"))
    t = time.monotonic()
    try:
        call(port, Op.LIST)
        listed = f"{time.monotonic() - t:.3f} s"
    except (OSError, AssertionError) as e:
        listed = f"failed ({e})"
    for s in flood:
        s.close()
    time.sleep(8)
    return (
        f"replica server: {len(flood)} connections made in {took:.1f} s; it holds {fds} "
        f"descriptors; RSS {base:.1f} MiB before, {peak:.1f} MiB during, "
        f"{rss_mib(rs.pid):.1f} MiB 8 s after; LIST from 127.0.0.1: {listed}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=ROOT, help="the checkout whose cargohold runs")
    a = ap.parse_args()
    procs = Procs(os.path.abspath(a.tree))
    try:
        print(f"tree: {a.tree}")
        print(engine_flood(procs))
        print(replica_server_flood(procs))
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
