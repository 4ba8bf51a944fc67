"""``cargohold volume import NAME --from FILE|DEVICE``: a new volume with the contents of a
raw image or a block device, sparse-aware: holes stay holes.

How: the volume is created (the source's size rounded up to 4 KiB, or ``--size``),
attached (``--node``, default as for ``volume attach``), and only the source's data is
written through the engine's NBD export, then flushed, and the volume detached. Data is
found with SEEK_DATA/SEEK_HOLE (cli/sparse_source.py) (files on filesystems that keep holes), and within the data,
runs of zeros of ``CHUNK`` are skipped too (block devices, and images without holes), so a
fresh volume stays thin where the source reads zero. Writes are pipelined (``DEPTH`` in
flight). Progress on stderr; ``-o json`` prints the volume and the byte counts.

The NBD export must be plain ``nbd://`` (a local cluster's, or a node's with NBD TLS off):
run it on the node for an ``nbds://`` one. A failed import leaves the volume (detached)
and says so: delete it, or import again under another name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    handle_errors,
    human_size,
    progress,
    render,
    say,
)
from cargohold.cli.sparse_source import pieces, source_size
from cargohold.cli.units import parse_size
from cargohold.cli.volume_cmd import default_node, volume_app
from cargohold.constants import BLOCK_SIZE
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

DEPTH = 8  # writes in flight


async def write_all(
    uri: str, fd: int, size: int, on_progress: Callable[[int, int], None]
) -> dict[str, int]:
    """Write ``fd``'s data into the NBD export ``uri``; -> byte counts."""
    import asyncio  # here, as the NBD client: ``cargohold volume list`` needs neither

    from cargohold.verify.client import Connection

    conn = await Connection.connect(uri)
    written = scanned = 0
    try:
        sem = asyncio.Semaphore(DEPTH)
        tasks: set[asyncio.Task[None]] = set()

        async def one(off: int, data: bytes) -> None:
            try:
                await conn.write(off, data)
            finally:
                sem.release()

        for off, data in pieces(fd, size):
            await sem.acquire()
            t = asyncio.create_task(one(off, data))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            written += len(data)
            scanned = off + len(data)
            on_progress(scanned, written)
            for done in [t for t in tasks if t.done()]:
                done.result()  # a failed write stops the import
        await asyncio.gather(*tasks)
        await conn.flush()
    finally:
        await conn.close()
    on_progress(size, written)
    return {"bytes_written": written, "source_bytes": size}


@volume_app.command("import")
@handle_errors
def import_(
    name: str,
    source: str = typer.Option(..., "--from", help="a raw image file or a block device"),
    size: str | None = typer.Option(
        None, "--size", help="the volume's size (default: the source's, rounded up to 4 KiB)"
    ),
    replicas: int | None = typer.Option(None, "--replicas", min=1, max=16, help="default 3"),
    node: str | None = typer.Option(
        None, "--node", help="attach it there to write (default: as attach)"
    ),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Create a volume NAME from a raw image or a block device (holes stay holes)."""
    import asyncio  # here: the other volume commands load this module too

    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError as e:
        raise ConfigError(f"--from {source}: {e.strerror}") from None
    try:
        src_size = source_size(fd)
        want = parse_size(size) if size else -(-src_size // BLOCK_SIZE) * BLOCK_SIZE
        if want < src_size:
            raise ConfigError(f"--size {size} is smaller than {source} ({src_size} bytes)")
        if want <= 0:
            raise ConfigError(f"{source} is empty: give --size")
        with ManagerClient.discover(api, dir) as c:
            c.create_volume(name, want, replicas=replicas)
            c.wait_placed(name, timeout)
            where = node or default_node(c, c.volume(name))
            c.attach(name, where)
            vol = c.wait_attached(name, where, timeout)
            uri = vol["endpoint"]
            if not uri.startswith("nbd://"):
                c.detach(name)
                raise ConfigError(
                    f"volume {name} is served at {uri}: import writes to plain nbd:// "
                    "exports only (run it where NBD TLS is off); the volume is left empty"
                )
            try:
                with progress(f"importing {source} into {name}") as update:

                    def on(scanned: int, written: int) -> None:
                        update(scanned / src_size if src_size else 1.0, human_size(written))

                    counts = asyncio.run(write_all(uri, fd, src_size, on))
            finally:
                c.detach(name)
                c.wait_detached(name, timeout)
            out: dict[str, Any] = {**c.volume(name), **counts}
    finally:
        os.close(fd)
    render(
        out,
        output,
        lambda v: say(
            f"volume [bold]{escape(name)}[/bold] imported from {escape(source)}: "
            f"{human_size(counts['bytes_written'])} of data in {human_size(want)}"
        ),
    )
