"""Where a disk may be: the rule the manager applies to ``POST /api/v1/nodes/{node}/disks``
and the agent applies again before it creates a disk's directory (pure; the caller gives
the allowed roots).

A disk path is taken only when, after ``..`` and every symlink are resolved (``realpath``),
it lies at or under one of the allowed roots, and neither it nor any root is a system
directory (``SYSTEM``: /, /etc, /proc, /sys, /dev, /boot, /usr, /bin, /sbin, /lib, /root...)
or inside one. The manager's roots are its ``disk_roots`` setting; the agent's are its own
(``CARGOHOLD_AGENT_DISK_ROOTS``) plus its node directory and the disks it was started with.
Resolving on the manager sees the manager's file system, not the node's: that is why the
agent, which creates the directory, checks again on its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from cargohold.errors import InvalidArgument

SYSTEM = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/kubelet",
    "/var/lib/docker",
    "/var/lib/containerd",
)
"""Directories (and everything under them) that never hold a disk; "/" itself neither."""

DEFAULT_ROOTS = ("/var/lib/cargohold",)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def system_dir(path: str) -> str | None:
    """The system directory ``path`` is (or lies in), if any ("/" for the root itself)."""
    if path == "/":
        return "/"
    for s in SYSTEM:
        if _under(path, os.path.realpath(s)) or _under(path, s):
            return s
    return None


def check_roots(roots: Iterable[str]) -> list[str]:
    """The roots, resolved; InvalidArgument for a relative one or a system directory."""
    out = []
    for r in roots:
        if not r or not os.path.isabs(r):
            raise InvalidArgument(f"disk root {r!r} is not an absolute path")
        real = os.path.realpath(r)
        bad = system_dir(real)
        if bad is not None:
            raise InvalidArgument(f"disk root {r!r} is (in) the system directory {bad}")
        out.append(real)
    return out


def check_disk_path(path: str, roots: Iterable[str]) -> str:
    """``path`` resolved, when it may hold a disk; InvalidArgument saying why not."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidArgument("a disk path must be a non-empty absolute path")
    if not os.path.isabs(path):
        raise InvalidArgument(f"disk path {path!r} is not absolute")
    real = os.path.realpath(path)
    shown = path if real == path else f"{path!r} (that is {real!r})"
    bad = system_dir(real)
    if bad is not None:
        raise InvalidArgument(f"disk path {shown} is (in) the system directory {bad}")
    allowed = check_roots(roots)
    if not any(_under(real, r) for r in allowed):
        raise InvalidArgument(
            f"disk path {shown} is not under an allowed disk root "
            f"({', '.join(allowed) or 'none configured'}); see docs/security.md, 'Disks'"
        )
    return real
