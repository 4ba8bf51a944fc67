"""``cargohold engine``: run one volume's engine — replicate to its replicas, serve it
over NBD — until SIGTERM/SIGINT. Normally started by the node agent; by hand for tests.

    cargohold engine --volume pvc-1 --epoch 3 \\
        --replica r0@10.0.0.1:9500 --replica r1@10.0.0.2:9500 --replica r2@10.0.0.3:9500 \\
        --local r0 --listen 127.0.0.1:10809 --control /run/cargohold/pvc-1.sock \\
        --require 2:1288

``--require EPOCH:GEN``: the newest (epoch, generation) the manager recorded for the
volume; if every reachable replica is older, the engine refuses to start (exit 1) instead
of serving a volume that lacks acknowledged writes (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import typer

from cargohold import memtune
from cargohold.cli.main import app
from cargohold.cli.nbd_cmd import DEFAULT_NBD_PORT, _split
from cargohold.cli.replica_cmd import console
from cargohold.errors import CargoholdError, ConfigError


@app.command("engine")
def engine(
    volume: str = typer.Option(..., help="volume name"),
    replica: list[str] = typer.Option(..., "--replica", help="ID@HOST:PORT (repeatable)"),
    epoch: int = typer.Option(..., min=1, help="this engine's epoch: older engines are fenced"),
    local: str = typer.Option(None, help="id of the replica on this node (read first)"),
    listen: str = typer.Option(
        None, help=f"NBD on HOST:PORT (default 127.0.0.1:{DEFAULT_NBD_PORT})"
    ),
    unix: str = typer.Option(None, help="NBD also on this unix socket"),
    control: str = typer.Option(None, help="control API (JSON lines) on this unix socket"),
    min_replicas: int = typer.Option(None, min=1, help="fewest replicas to keep serving (1)"),
    replica_timeout: float = typer.Option(None, help="seconds before a replica is dropped (5)"),
    rebuild_bandwidth: str = typer.Option(
        None, help="rebuild copy rate, e.g. 200MiB (0 = unlimited)"
    ),
    require: str = typer.Option(
        None,
        metavar="EPOCH:GEN",
        help="refuse to start if every reachable replica is older than this (epoch, generation)",
    ),
) -> None:
    """Serve a replicated volume over NBD."""
    from pydantic import ValidationError

    from cargohold.cli.replica_cmd import parse_size
    from cargohold.engine.control import serve_control
    from cargohold.engine.replica_link import ReplicaSpec
    from cargohold.engine.scrubber import Scrubber
    from cargohold.engine.volume import Volume
    from cargohold.frontend.nbd_server import serve
    from cargohold.settings import EngineSettings

    logging.basicConfig(
        level=os.environ.get("CARGOHOLD_LOG", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        specs = [ReplicaSpec.parse(r, local=r.split("@", 1)[0] == local) for r in replica]
        given = {"min_replicas": min_replicas, "replica_timeout": replica_timeout}
        if rebuild_bandwidth:
            given["rebuild_bandwidth"] = parse_size(rebuild_bandwidth)
        settings = EngineSettings(**{k: v for k, v in given.items() if v is not None})
        host, port = _split(listen) if listen else ("127.0.0.1", DEFAULT_NBD_PORT)
        required = parse_require(require) if require else (0, 0)
    except (CargoholdError, ValidationError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None

    async def main() -> None:
        vol = Volume(volume, specs, epoch, settings, require=required)
        await vol.start()
        memtune.freeze_gc()

        def listening(addresses: list[str]) -> None:
            tcp = next((a for a in addresses if not a.startswith("unix:")), None)
            if tcp is not None:
                vol.endpoint = endpoint_uri(tcp, volume)

        scrubber = Scrubber(vol)
        vol._spawn(scrubber.run())  # periodic passes and those asked for; vol.close() ends it
        ctl = await serve_control(vol, control, scrubber) if control else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(
                vol,
                host,
                port,
                unix=unix,
                name=volume,
                description=volume,
                stop=stop,
                ready=listening,
            )
        finally:
            if ctl is not None:
                ctl.close()
            await vol.close()

    memtune.tune_malloc()
    try:
        import uvloop

        uvloop.run(main())
    except (CargoholdError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
    finally:
        for path in (unix, control):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def parse_require(text: str) -> tuple[int, int]:
    """``EPOCH:GEN`` -> (epoch, generation), both non-negative integers."""
    epoch, sep, gen = text.partition(":")
    try:
        pair = (int(epoch), int(gen))
    except ValueError:
        pair = (-1, -1)
    if not sep or min(pair) < 0:
        raise ConfigError(f"--require {text!r}: expected EPOCH:GEN, e.g. 3:1288")
    return pair


def endpoint_uri(bound: str, volume: str) -> str:
    """The NBD URI clients use for a bound ``HOST:PORT``. A wildcard address is reported
    as the loopback address of its family (the consumer runs on the engine's node)."""
    host, _, port = bound.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"nbd://{host}:{port}/{volume}"
