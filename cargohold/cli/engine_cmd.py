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

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from cargohold import memtune
from cargohold.cli.units import parse_size, split_addr
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.errors import CargoholdError, ConfigError

# The node agent runs one engine per attached volume (``python -m cargohold engine ...``):
# ``cargohold/__main__.py`` hands those arguments to ``main`` here before anything else is
# imported, and this module parses them with argparse and imports only the data path. Going
# through the typer app would load typer, pydantic and every other command's modules: about
# 30 MiB more per engine (docs/benchmarks.md, "Idle cost").


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cargohold engine", description="Serve a replicated volume over NBD."
    )
    p.add_argument("--volume", required=True, help="volume name")
    p.add_argument("--replica", action="append", required=True, help="ID@HOST:PORT (repeatable)")
    p.add_argument(
        "--epoch", type=int, required=True, help="this engine's epoch: older engines are fenced"
    )
    p.add_argument(
        "--epoch-jump",
        action="store_true",
        help="the manager raised the volume's epoch with `volume recover-epoch`: replicas "
        "may be opened more than 65,536 epochs above their own",
    )
    p.add_argument("--local", help="id of the replica on this node (read first)")
    p.add_argument("--listen", help=f"NBD on HOST:PORT (default 127.0.0.1:{DEFAULT_NBD_PORT})")
    p.add_argument("--unix", help="NBD also on this unix socket")
    p.add_argument("--control", help="control API (JSON lines) on this unix socket")
    p.add_argument("--min-replicas", type=int, help="fewest replicas to keep serving (1)")
    p.add_argument("--replica-timeout", type=float, help="seconds before a replica is dropped (5)")
    p.add_argument("--rebuild-bandwidth", help="rebuild copy rate, e.g. 200MiB (0 = unlimited)")
    p.add_argument(
        "--require",
        metavar="EPOCH:GEN",
        help="refuse to start if every reachable replica is older than this (epoch, generation)",
    )
    p.add_argument(
        "--last-scrub-at",
        type=float,
        default=0.0,
        metavar="UNIX_TIME",
        help="when the volume's last scrub pass ended: the next periodic pass counts from it "
        "(default: from the engine's start)",
    )
    return p


def main(argv: list[str]) -> int:
    """Run the engine until SIGTERM/SIGINT. -> the exit status (2: bad arguments)."""
    a = parser().parse_args(argv)
    if a.epoch < 1:
        return _fail("--epoch must be at least 1", 2)
    volume, local, unix, control = a.volume, a.local, a.unix, a.control
    epoch = a.epoch
    from cargohold.engine.control import serve_control
    from cargohold.engine.replica_link import ReplicaSpec
    from cargohold.engine.scrubber import Scrubber
    from cargohold.engine.volume import Volume
    from cargohold.frontend.nbd_server import serve
    from cargohold.settings import EngineSettings, NBDSettings

    logging.basicConfig(
        level=os.environ.get("CARGOHOLD_LOG", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        specs = [ReplicaSpec.parse(r, local=r.split("@", 1)[0] == local) for r in a.replica]
        given = {"min_replicas": a.min_replicas, "replica_timeout": a.replica_timeout}
        if a.rebuild_bandwidth:
            given["rebuild_bandwidth"] = parse_size(a.rebuild_bandwidth)
        settings = EngineSettings(**{k: v for k, v in given.items() if v is not None})
        nbd_settings = NBDSettings()  # CARGOHOLD_NBD_*: connection limits and timeouts
        host, port = (
            split_addr(a.listen, DEFAULT_NBD_PORT) if a.listen else ("127.0.0.1", DEFAULT_NBD_PORT)
        )
        required = parse_require(a.require) if a.require else (0, 0)
    except CargoholdError as e:
        return _fail(str(e), 2)

    async def main() -> None:
        vol = Volume(volume, specs, epoch, settings, require=required, epoch_jump=a.epoch_jump)
        await vol.start()
        memtune.freeze_gc()

        def listening(addresses: list[str]) -> None:
            tcp = next((a for a in addresses if not a.startswith("unix:")), None)
            if tcp is not None:
                vol.endpoint = endpoint_uri(tcp, volume)

        scrubber = Scrubber(vol, last_scrub_at=a.last_scrub_at)
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
                settings=nbd_settings,
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
        return _fail(str(e), getattr(e, "exit_code", 1))
    finally:
        for path in (unix, control):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


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
