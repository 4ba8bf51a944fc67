"""The daemons' process wiring with real processes (issue #15, item 2): a replica server (one
process, and a parent with workers) and an engine, run by ``replica/daemon.py`` and
``engine/daemon.py``, serve real NBD clients, log through the one setup
(``cargohold/logs.py``) and shut down cleanly on SIGTERM, removing their unix sockets.

Started with a ``CARGOHOLD_LOG`` that is not a level: before the one setup, each daemon
died at its start with a traceback (``ValueError: Unknown level``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from cargohold.constants import MIB
from cargohold.replica.client import ReplicaClient
from tests.support.engine import EngineProc
from tests.support.nbd_clients import need, qemu_io
from tests.support.processes import ROOT, ServerProc

SIZE = 16 * MIB


async def _create(port: int, replica: str) -> None:
    c = await ReplicaClient.connect("127.0.0.1", port)
    try:
        await c.create(replica, SIZE)
    finally:
        await c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_daemons_serve_log_once_and_stop_cleanly_despite_a_bad_log_level(
    tmp_path, monkeypatch, workers
):
    need("qemu-io")
    monkeypatch.setenv("CARGOHOLD_LOG", "chatty")  # the processes below inherit it
    disk = tmp_path / "disk"
    disk.mkdir()
    unix = str(tmp_path / "replica.sock")
    server = ServerProc([str(disk)], unix=unix, workers=workers).start()
    engine = None
    try:
        asyncio.run(_create(server.port, "r0"))
        engine = EngineProc(
            "vol",
            [f"r0@127.0.0.1:{server.port}"],
            1,
            str(tmp_path),
            local="r0",
            extra=["--unix", str(tmp_path / "nbd.sock")],
        ).start()
        qemu_io(engine.uri, "write -P 0x5a 0 1M", "flush", "read -P 0x5a 0 1M")
        assert engine.ctl(op="status")["endpoint"] == engine.uri
        assert engine.stop() == 0
        assert server.stop() == 0
    finally:
        for proc in (engine, server):
            if proc is not None:
                proc.kill()
    for proc in (server, engine):
        assert proc is not None
        out = proc.output()
        assert "Traceback" not in out and "Logging error" not in out, out
        assert "CARGOHOLD_LOG='chatty' is not a log level" in out, out
    assert " INFO cargohold.replica: shutting down" in server.output() or workers > 1
    # the unix sockets are gone after a clean stop
    leftovers = {unix, engine.control, str(tmp_path / "nbd.sock")} & {
        str(p) for p in tmp_path.iterdir()
    }
    assert leftovers == set()
    # and the data is on the replica
    asyncio.run(_check(server, "r0"))


async def _check(server: ServerProc, replica: str) -> None:
    s = ServerProc(server.disks).start()
    try:
        c = await ReplicaClient.connect("127.0.0.1", s.port)
        await c.open(replica, 1)
        assert bytes(await c.read(0, MIB)) == b"\x5a" * MIB
        await c.close()
    finally:
        s.stop()
    assert os.path.isdir(server.disks[0])


def test_nbd_serve_grows_refuses_to_shrink_and_stops_cleanly(tmp_path, monkeypatch):
    """``nbd-serve``'s process (``frontend/daemon.py``): a replica created at 2 MiB, grown
    to 4 MiB on a restart with its data kept, a smaller size refused with a clear error
    (no traceback), and the unix socket removed on SIGTERM."""
    need("qemu-io")
    from tests.support.nbd_server import NBDProc

    monkeypatch.setenv("CARGOHOLD_LOG", "chatty")
    d, unix = str(tmp_path / "rep"), str(tmp_path / "nbd.sock")
    first = NBDProc(d, size="2MiB", unix=unix).start()
    qemu_io(first.unix_uri, "write -P 0x3c 0 1M", "flush")
    assert first.stop() == 0 and not os.path.exists(unix)
    grown = NBDProc(d, size="4MiB").start()
    qemu_io(grown.uri, "read -P 0x3c 0 1M", "read -P 0 1M 3M")
    assert grown.stop() == 0
    for p in (first, grown):
        assert "Traceback" not in p.output() and "is not a log level" in p.output()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shrink = subprocess.run(
        [sys.executable, "-m", "cargohold", "nbd-serve", "--dir", d, "--size", "1MiB"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    out = shrink.stdout + shrink.stderr
    assert shrink.returncode == 2 and "cannot shrink" in out and "Traceback" not in out, out
