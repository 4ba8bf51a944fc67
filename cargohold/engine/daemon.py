"""The engine as a process: one volume's engine, its scrubber, its control socket and its
NBD server, wired together and run on uvloop until SIGTERM/SIGINT.

``cargohold engine`` (``cli/engine_cmd.py``) parses its arguments into an ``EngineRun`` and
calls ``run``; the node agent starts one such process per attached volume. Memory tuning
(``memtune``: malloc thresholds, a frozen GC after the start) and the unix sockets' cleanup
live here too. Logging is set up by the caller (``cargohold.logs``) before ``run``.

This module is imported by every engine process: it must stay lean (no typer, pydantic,
numpy, rich or httpx; ``tests/unit/test_settings.py`` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field

from cargohold import memtune
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.engine.control import serve_control
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.scrubber import Scrubber
from cargohold.engine.volume import Volume
from cargohold.frontend.nbd_server import serve
from cargohold.security.tls import credentials_or_plaintext
from cargohold.settings import EngineSettings, NBDSettings


@dataclass(frozen=True)
class EngineRun:
    """What one engine process serves, and where (``cargohold engine``'s options)."""

    volume: str
    replicas: list[ReplicaSpec]
    epoch: int
    settings: EngineSettings = field(default_factory=EngineSettings)
    nbd: NBDSettings = field(default_factory=NBDSettings)  # CARGOHOLD_NBD_*
    host: str = "127.0.0.1"
    port: int = DEFAULT_NBD_PORT
    unix: str | None = None  # NBD also on this unix socket
    control: str | None = None  # the control API (JSON lines) on this unix socket
    require: tuple[int, int] = (0, 0)  # refuse to start below this (epoch, generation)
    epoch_jump: bool = False
    last_scrub_at: float = 0.0  # when the volume's last scrub pass ended (UNIX time)


def run(config: EngineRun) -> None:
    """Serve the volume until SIGTERM/SIGINT, then close it and remove its unix sockets.
    Raises CargoholdError (e.g. stale replicas, ``exit_code`` set) or OSError (e.g. the
    address is in use)."""
    memtune.tune_malloc()
    try:
        import uvloop

        uvloop.run(serve_engine(config))
    finally:
        for path in (config.unix, config.control):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


async def serve_engine(config: EngineRun) -> None:
    """The engine in the running event loop, until SIGTERM/SIGINT."""
    # TLS credentials, or --plaintext said out loud: nothing else starts an engine
    credentials_or_plaintext(
        config.settings.tls_dir, config.settings.plaintext, f"the engine of {config.volume}"
    )
    vol = Volume(
        config.volume,
        config.replicas,
        config.epoch,
        config.settings,
        require=config.require,
        epoch_jump=config.epoch_jump,
    )
    await vol.start()
    memtune.freeze_gc()

    def listening(addresses: list[str]) -> None:
        tcp = next((a for a in addresses if not a.startswith("unix:")), None)
        if tcp is not None:
            vol.endpoint = endpoint_uri(tcp, config.volume)

    scrubber = Scrubber(vol, last_scrub_at=config.last_scrub_at)
    scrubbing = asyncio.get_running_loop().create_task(scrubber.run())  # periodic and asked
    ctl = await serve_control(vol, config.control, scrubber) if config.control else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(
            vol,
            config.host,
            config.port,
            unix=config.unix,
            settings=config.nbd,
            name=config.volume,
            description=config.volume,
            stop=stop,
            ready=listening,
        )
    finally:
        if ctl is not None:
            ctl.close()
        scrubbing.cancel()
        await asyncio.gather(scrubbing, return_exceptions=True)
        await vol.close()


def endpoint_uri(bound: str, volume: str) -> str:
    """The NBD URI clients use for a bound ``HOST:PORT``. A wildcard address is reported
    as the loopback address of its family (the consumer runs on the engine's node)."""
    host, _, port = bound.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"nbd://{host}:{port}/{volume}"
