"""Durable, atomic file replacement: the one way cargohold rewrites a file in place.

Write a temporary file beside the target, fsync it, rename it over the target and fsync the
directory, so that a reader (or the next start after a crash or power loss) sees the old
content or the new, never half of either. Used by the replica store's metadata, backup file
targets, the CA's files, the agent's state and the local cluster's description. Raises
OSError; callers turn it into their errors (NoSpace, TargetError ...).
"""

from __future__ import annotations

import contextlib
import os
import uuid


def write_atomic(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, mode: int = 0o600
) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the temporary file has a unique
    name (concurrent writers of one path do not collide) and is removed on failure."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
