"""NBD clients for tests and benchmarks: qemu-io (a real client) and a raw fixed-newstyle
handshake over a socket; ``need`` skips a test when a client tool is not installed.

Imports nothing from ``cargohold`` at the top (tests/probe/engine_support.py also runs under
Debian's Python)."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess


def missing_tools(*tools: str) -> list[str]:
    """The tools in ``tools`` that are not on PATH."""
    return [t for t in tools if shutil.which(t) is None]


def need(*tools: str) -> None:
    """Skip the calling test when one of ``tools`` is not installed."""
    import pytest

    missing = missing_tools(*tools)
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)")


def qemu_io(
    uri: str, *cmds: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run qemu-io's ``cmds`` (``-c`` each) against ``uri`` in raw format. With ``check``
    (the default), fail unless it exits 0 with neither "fail" nor "error" in its output;
    ``check=False`` returns whatever happened, for a test that expects a failure."""
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run([*args, uri], capture_output=True, text=True, timeout=timeout)
    if check:
        out = (p.stdout + p.stderr).lower()
        assert p.returncode == 0 and "fail" not in out and "error" not in out, (
            f"qemu-io {cmds}: rc {p.returncode}\n{p.stdout}{p.stderr}"
        )
    return p


def qemu_io_ok(uri: str, *cmds: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``qemu_io`` that fails the test on any error or pattern mismatch."""
    return qemu_io(uri, *cmds, timeout=timeout, check=True)


def recv_exactly(s: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes from ``s``: fewer only when the peer closed."""
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def nbd_handshake(
    port: int, source: str | None = None, timeout: float = 2.0
) -> socket.socket | None:
    """A full fixed-newstyle handshake (OPT_GO) with the server on 127.0.0.1:``port``, from
    address ``source`` when given; the connected socket, or None if refused or closed."""
    # imported here: the probe's helpers import this module under Debian's Python
    from cargohold.protocol import nbd

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source is not None:
            s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        greeting = recv_exactly(s, 18)
        if len(greeting) < 18:
            s.close()
            return None
        s.sendall(struct.pack(">I", 3))
        body = struct.pack(">IH", 0, 0)
        s.sendall(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, len(body)) + body)
        want = struct.pack(">QIII", nbd.OPT_REPLY_MAGIC, nbd.OPT_GO, nbd.REP_ACK, 0)
        got = b""
        while not got.endswith(want):
            chunk = s.recv(4096)
            if not chunk:
                s.close()
                return None
            got += chunk
        return s
    except OSError:
        s.close()
        return None


def pattern_ok(uri: str, off: int, length: int, pattern: int) -> bool:
    """Whether ``length`` bytes at ``off`` read back as ``pattern`` through qemu-io."""
    p = qemu_io(uri, f"read -P {pattern} {off} {length}", timeout=60, check=False)
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout + p.stderr
