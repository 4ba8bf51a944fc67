"""The daemons' process wiring with real processes (issue #15, item 2): a replica server (one
process, and a parent with workers) and an engine, run by ``replica/daemon.py`` and
``engine/daemon.py``, serve real NBD clients, log through the one setup
(``cargohold/logs.py``) and shut down cleanly on SIGTERM, removing their unix sockets.

Started with a ``CARGOHOLD_LOG`` that is not a level: before the one setup, each daemon
died at its start with a traceback (``ValueError: Unknown level``)."""

from __future__ import annotations

import asyncio
import os

import pytest

from cargohold.constants import MIB
from cargohold.replica.client import ReplicaClient
from tests.integration.engine_procs import EngineProc
from tests.integration.test_engine import need, qemu_io
from tests.procs import ServerProc

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
