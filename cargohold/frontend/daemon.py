"""``cargohold nbd-serve`` as a process: one local replica (a FileStore directory) served
over NBD on uvloop until SIGTERM/SIGINT, then drained, flushed and closed cleanly.

``cli/nbd_cmd.py`` parses its options into an ``NbdServeRun`` and calls ``run``. Opening
(or creating, or growing) the replica, signals, the event loop, memory tuning (``memtune``)
and removing the unix socket live here. Logging is set up by the caller (``cargohold.logs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field

from cargohold import memtune
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.errors import ConfigError
from cargohold.frontend.local_device import LocalDevice
from cargohold.frontend.nbd_server import serve
from cargohold.settings import NBDSettings
from cargohold.store.file_store import META_FILE, FileStore

DEFAULT_SIZE = 1 << 30  # of a replica created without a size


@dataclass(frozen=True)
class NbdServeRun:
    """What ``nbd-serve`` serves, and where (its options)."""

    dir: str  # the replica's directory (created when missing)
    size: int | None = None  # when creating (default 1 GiB); larger than the replica: grow it
    host: str = "127.0.0.1"
    port: int = DEFAULT_NBD_PORT
    unix: str | None = None  # NBD also on this unix socket
    name: str = ""  # export name (the empty name always works too)
    read_only: bool = False
    nbd: NBDSettings = field(default_factory=NBDSettings)  # CARGOHOLD_NBD_*


def open_store(directory: str, size: int | None) -> FileStore:
    """The replica in ``directory``: opened (grown to ``size`` if that is larger), or
    created. ConfigError if ``size`` is smaller than the replica (no shrinking)."""
    if not os.path.exists(os.path.join(directory, META_FILE)):
        return FileStore.create(directory, size or DEFAULT_SIZE)
    store = FileStore.open(directory)
    if size is not None and size > store.size:
        store.expand(size)
    elif size is not None and size < store.size:
        store.close()
        raise ConfigError(f"the replica in {directory} is {store.size} bytes; cannot shrink")
    return store


def run(config: NbdServeRun) -> None:
    """Serve until SIGTERM/SIGINT. Raises CargoholdError or OSError (e.g. the address is in
    use, the replica cannot be opened)."""
    device = LocalDevice(open_store(config.dir, config.size), read_only=config.read_only)

    async def main() -> None:
        memtune.freeze_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            device,
            config.host,
            config.port,
            unix=config.unix,
            name=config.name,
            description=config.dir,
            stop=stop,
            settings=config.nbd,
        )

    memtune.tune_malloc()
    try:
        try:
            import uvloop

            uvloop.run(main())
        except ImportError:  # pragma: no cover - uvloop is a pinned dependency
            asyncio.run(main())
    finally:
        device.close()
        if config.unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.unix)
