"""The agent's wait for a starting replica server (``ReplicaServerProcess.start``) has no
end while the server recovers replicas after a machine crash: that reads their written data
before it listens (docs/formats/replica-store.md, "Machine crashes"), and a server stopped
and started again would begin it again, for ever. A stand-in child logs the recovery's
lines as the real one does (cargohold.constants RECOVERING, RECOVERED)."""

from __future__ import annotations

import sys
import time

import pytest

from cargohold.agent.processes import ReplicaServerProcess
from cargohold.constants import RECOVERED, RECOVERING
from cargohold.errors import CargoholdError


def _server(tmp_path, script: str) -> ReplicaServerProcess:  # type: ignore[no-untyped-def]
    rs = ReplicaServerProcess("n1", "127.0.0.1", 1, [str(tmp_path)], str(tmp_path / "rs.log"))
    rs.argv = [sys.executable, "-c", script]  # never listens: port 1 answers nothing
    return rs


async def test_the_wait_lasts_while_the_server_recovers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "import sys, time\n"
        f"print({RECOVERING!r} + ' r1: verifying', file=sys.stderr, flush=True)\n"
        "time.sleep(2.5)\n"
        f"print({RECOVERED!r} + ' r1: ended', file=sys.stderr, flush=True)\n"
        "time.sleep(30)\n"
    )
    rs = _server(tmp_path, script)
    t0 = time.monotonic()
    with pytest.raises(CargoholdError, match="did not answer"):
        await rs.start(timeout=0.5)
    took = time.monotonic() - t0
    assert took >= 2.5, f"gave up after {took:.1f} s, while the server was recovering"
    assert took < 15, f"waited {took:.1f} s after the recovery ended"
    assert not rs.alive  # stopped when it still did not answer


async def test_without_a_recovery_the_wait_ends_at_its_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs = _server(tmp_path, "import time\ntime.sleep(30)\n")
    t0 = time.monotonic()
    with pytest.raises(CargoholdError, match="did not answer"):
        await rs.start(timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert not rs.alive


async def test_after_the_recovery_the_server_has_the_timeout_again_to_listen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The recovery ends, then the server starts listening (with worker processes the
    parent listens after the last worker's recovery, a moment later): the wait does not
    give up in between because its first deadline is long past. The stand-in becomes the
    real replica server 0.5 s after its last RECOVERED line."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "d").mkdir()
    server = [sys.executable, "-m", "cargohold", "replica-server", "--listen"]
    server += [f"127.0.0.1:{port}", "--disk", str(tmp_path / "d"), "--plaintext"]
    script = (
        "import os, sys, time\n"
        f"print({RECOVERING!r} + ' r1: verifying', file=sys.stderr, flush=True)\n"
        "time.sleep(5.5)\n"
        f"print({RECOVERED!r} + ' r1: ended', file=sys.stderr, flush=True)\n"
        "time.sleep(0.5)\n"
        f"os.execv(sys.executable, {server!r})\n"
    )
    rs = ReplicaServerProcess("n1", "127.0.0.1", port, [str(tmp_path)], str(tmp_path / "rs.log"))
    rs.argv = [sys.executable, "-c", script]
    try:
        await rs.start(timeout=5.0)
        assert rs.alive
    finally:
        await rs.stop()
