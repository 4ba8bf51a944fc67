"""Show a local cluster's logs when a test through it failed, before its directory goes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TAIL = 60  # lines of each log


def failed(request: Any) -> bool:
    """Whether the test that ``request`` belongs to failed (tests/conftest.py keeps reports)."""
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


def print_tails(directory: str | Path, lines: int = TAIL) -> None:
    """Print the last ``lines`` of every log under ``directory`` (pytest shows it with the
    failure)."""
    for log in sorted(Path(directory).rglob("*.log")):
        try:
            text = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"===== {log} (last {len(text)} lines)")
        print("\n".join(text))


@contextlib.contextmanager
def local_cluster(
    name: str, failed_when: Callable[[], bool], nodes: int = 3, backend: str = "sqlite"
) -> Iterator[Path]:
    """A local cluster of real processes in ``/tmp/NAME-PID`` (short: its unix sockets'
    paths must be), up for the block; after it, its logs' tails are printed when
    ``failed_when()`` says the test failed, then it goes down and its directory with it."""
    from cargohold.launcher.cluster import LocalCluster

    d = Path(f"/tmp/{name}-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=nodes, backend=backend).up(timeout=90)
    try:
        yield d
    finally:
        if failed_when():
            print_tails(d)
        c.down(purge=True)
