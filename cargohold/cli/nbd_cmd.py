"""``cargohold nbd-serve``: serve one local replica over NBD (1 replica, no network).

For trying clients against cargohold, for tests, and to measure the NBD layer's own cost.
The replica is a FileStore in ``--dir`` (created when missing); SIGTERM or SIGINT drains
the requests in flight, flushes, closes the replica cleanly and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import typer

from cargohold import memtune
from cargohold.cli.main import app
from cargohold.cli.replica_cmd import console, parse_size, split_addr
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.errors import CargoholdError, ConfigError
from cargohold.logs import setup_logging


def _split(addr: str) -> tuple[str, int]:
    return split_addr(addr, DEFAULT_NBD_PORT)


@app.command("nbd-serve")
def nbd_serve(
    dir: str = typer.Option(..., "--dir", help="directory of the replica (created if missing)"),
    size: str = typer.Option(
        None, help="size when creating (default 1GiB); a larger size expands an existing one"
    ),
    listen: str = typer.Option(
        None, help=f"HOST:PORT (default 127.0.0.1:{DEFAULT_NBD_PORT}; port 0 = any)"
    ),
    unix: str = typer.Option(None, help="also listen on this unix socket"),
    name: str = typer.Option("", help="export name (the empty name always works too)"),
    read_only: bool = typer.Option(False, "--read-only", help="refuse writes, trims, zeroes"),
) -> None:
    """Serve a local replica over NBD until SIGTERM/SIGINT."""
    from cargohold.frontend.local_device import LocalDevice
    from cargohold.frontend.nbd_server import serve
    from cargohold.settings import NBDSettings
    from cargohold.store.file_store import META_FILE, FileStore

    setup_logging()
    try:
        host, port = _split(listen) if listen else ("127.0.0.1", DEFAULT_NBD_PORT)
        nbd_settings = NBDSettings()  # CARGOHOLD_NBD_*: connection limits and timeouts
        want = parse_size(size) if size else None
        if os.path.exists(os.path.join(dir, META_FILE)):
            store = FileStore.open(dir)
            if want is not None and want > store.size:
                store.expand(want)
            elif want is not None and want < store.size:
                store.close()
                raise ConfigError(f"the replica in {dir} is {store.size} bytes; cannot shrink")
        else:
            store = FileStore.create(dir, want or 1 << 30)
    except CargoholdError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
    device = LocalDevice(store, read_only=read_only)

    async def main() -> None:
        memtune.freeze_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            device,
            host,
            port,
            unix=unix,
            name=name,
            description=dir,
            stop=stop,
            settings=nbd_settings,
        )

    memtune.tune_malloc()
    try:
        try:
            import uvloop

            uvloop.run(main())
        except ImportError:  # pragma: no cover - uvloop is a pinned dependency
            asyncio.run(main())
    except (CargoholdError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(getattr(e, "exit_code", 1)) from None
    finally:
        device.close()
        if unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix)
