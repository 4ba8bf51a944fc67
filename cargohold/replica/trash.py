"""The trash of a disk: where deleted replicas wait before they are really gone.

The replica server's DELETE renames ``<disk>/replicas/<id>/`` to
``<disk>/trash/<id>.<unix time>/`` (one rename on one filesystem: atomic, instant); the node
agent empties entries older than its ``trash_grace`` (default 24 h) with ``sweep``. Until
then a deletion can be undone by moving the directory back to ``<disk>/replicas/<id>/``
(docs/operations.md, "Cluster identity, orphans and the trash").
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time

log = logging.getLogger("cargohold.replica")

TRASH_DIR = "trash"
ENTRY = re.compile(r"^(?P<id>.+)\.(?P<at>[0-9]+)$")  # <replica id>.<unix time>


def trash_dir(disk: str) -> str:
    return os.path.join(disk, TRASH_DIR)


def move_to_trash(disk: str, replica_dir: str, rid: str, at: float | None = None) -> str:
    """Rename ``replica_dir`` into ``disk``'s trash. -> the new path."""
    root = trash_dir(disk)
    os.makedirs(root, exist_ok=True)
    stamp = int(time.time() if at is None else at)
    dest = os.path.join(root, f"{rid}.{stamp}")
    n = 0
    while os.path.exists(dest):  # deleted twice in one second (re-created meanwhile)
        n += 1
        dest = os.path.join(root, f"{rid}.{stamp + n}")
    os.rename(replica_dir, dest)
    _fsync_dir(root)
    _fsync_dir(os.path.dirname(replica_dir))
    return dest


def entries(disk: str) -> list[tuple[str, str, float]]:
    """What ``disk``'s trash holds: (replica id, path, deleted at)."""
    root = trash_dir(disk)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = ENTRY.match(name)
        if m:
            out.append((m["id"], os.path.join(root, name), float(m["at"])))
    return out


def trash_bytes(disk: str) -> int:
    """Bytes the trash of ``disk`` still holds (allocated blocks)."""
    total = 0
    for _rid, path, _at in entries(disk):
        for base, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.stat(os.path.join(base, f)).st_blocks * 512
                except OSError:
                    continue
    return total


def sweep(disks: list[str], grace: float, now: float | None = None) -> list[str]:
    """Remove trash entries deleted more than ``grace`` seconds ago. -> the paths removed.
    A failure to remove one is logged and the others go on."""
    t = time.time() if now is None else now
    gone = []
    for disk in disks:
        for rid, path, at in entries(disk):
            if t - at <= grace:
                continue
            try:
                shutil.rmtree(path)
            except OSError as e:
                log.warning("cannot empty %s from the trash: %s", path, e)
                continue
            log.info(
                "emptied replica %s from the trash of %s (deleted %.0f s ago)", rid, disk, t - at
            )
            gone.append(path)
    return gone


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
