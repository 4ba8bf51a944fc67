"""Network namespaces for a local cluster started with ``cargohold up --netns``.

Each node lives in a namespace of its own (``<prefix>-node-N``) with one interface,
``eth0``, joined by a veth pair to a bridge that sits in a namespace of its own
(``<prefix>-br``); the manager(s) and etcd live in ``<prefix>-mgr``, on the same bridge.
Addresses exist only inside the lab (``10.X.Y.0/24``, chosen from the cluster's directory),
so the root namespace's interfaces and routes are never touched. Cutting a node off
(``partition``) sets its bridge port down: its heartbeats to the manager stop too.

``LabLayout`` is pure (names and addresses); ``create``, ``destroy``, ``partition`` and
``heal`` run ``ip``. ``call_in`` runs a function in a thread that has entered a namespace,
so the launcher can reach addresses that exist only inside the lab. Used by
``cargohold.launcher.cluster``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cargohold.errors import CargoholdError

T = TypeVar("T")

NETNS_DIR = "/run/netns"
BRIDGE = "br0"
MANAGER_HOST = 2  # the manager namespace's address is .2
FIRST_NODE_HOST = 10  # node N is .(10 + N)
_CLONE_NEWNET = 0x40000000


class NetnsError(CargoholdError):
    """A namespace could not be made, changed or removed."""


def available() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "--netns needs root (it creates network namespaces); run as root or without --netns"
    if shutil.which("ip") is None:
        return "--netns needs iproute2 (the `ip` command), which is not installed"
    return None


@dataclass(frozen=True)
class LabLayout:
    """Names and addresses of one cluster's lab, derived from its directory alone."""

    prefix: str
    subnet: str  # "10.X.Y" (a /24)

    @classmethod
    def for_dir(cls, path: str) -> LabLayout:
        digest = hashlib.sha256(os.path.realpath(path).encode()).digest()
        # 10.64.0.0 - 10.191.255.0: clear of the usual 10.0/16, 10.1/16 and 10.96/12 only by
        # luck, but the lab's addresses never leave its namespaces anyway.
        return cls(prefix=f"ch{digest[:3].hex()}", subnet=f"10.{64 + digest[3] % 128}.{digest[4]}")

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    @property
    def manager_ns(self) -> str:
        return f"{self.prefix}-mgr"

    @property
    def manager_address(self) -> str:
        return f"{self.subnet}.{MANAGER_HOST}"

    def node_ns(self, index: int) -> str:
        return f"{self.prefix}-node-{index}"

    def node_address(self, index: int) -> str:
        return f"{self.subnet}.{FIRST_NODE_HOST + index}"

    @staticmethod
    def node_port(index: int) -> str:
        """The node's port on the bridge (an interface name in the bridge namespace)."""
        return f"p{index}"

    def namespaces(self, nodes: int) -> list[str]:
        return [self.bridge_ns, self.manager_ns, *(self.node_ns(i) for i in range(1, nodes + 1))]


def exec_prefix(ns: str | None) -> list[str]:
    """The argv prefix that runs a command in namespace ``ns`` (none for the root namespace).

    ``ip netns exec`` execs the command after entering the namespace: the PID stays the same.
    """
    return ["ip", "netns", "exec", ns] if ns else []


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {p.stderr.strip() or p.stdout.strip()}")


def existing(prefix: str) -> list[str]:
    """The namespaces whose names start with ``prefix-`` (ours, perhaps left from a crash)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def _join(layout: LabLayout, ns: str, port: str, address: str) -> None:
    """Put ``ns`` on the bridge: a veth pair eth0 (in ``ns``) <-> ``port`` (on the bridge)."""
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip(
        "link",
        "add",
        "eth0",
        "netns",
        ns,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        layout.bridge_ns,
    )
    _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", layout.bridge_ns, "link", "set", port, "master", BRIDGE)
    _ip("-n", layout.bridge_ns, "link", "set", port, "up")


def create(layout: LabLayout, nodes: int) -> None:
    """Make the bridge, the manager's namespace and one namespace per node.

    Namespaces of this layout left over from an earlier run are removed first. On failure
    everything made so far is removed again."""
    why = available()
    if why:
        raise NetnsError(why)
    destroy(layout)
    try:
        _ip("netns", "add", layout.bridge_ns)
        _ip("-n", layout.bridge_ns, "link", "set", "lo", "up")
        _ip("-n", layout.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", layout.bridge_ns, "link", "set", BRIDGE, "up")
        _join(layout, layout.manager_ns, "pm", layout.manager_address)
        for i in range(1, nodes + 1):
            _join(layout, layout.node_ns(i), layout.node_port(i), layout.node_address(i))
    except BaseException:
        destroy(layout)
        raise


def destroy(layout: LabLayout) -> list[str]:
    """Delete every namespace of this layout (nodes first, the bridge last); returns them."""
    gone = existing(layout.prefix)
    for ns in sorted(gone, key=lambda n: n == layout.bridge_ns):
        with contextlib.suppress(NetnsError):
            _ip("netns", "del", ns)
    left = existing(layout.prefix)
    if left:
        raise NetnsError(f"could not delete network namespaces {', '.join(left)}")
    return gone


def partition(layout: LabLayout, index: int) -> None:
    """Cut node ``index`` off from every other node and from the manager (both ways)."""
    _ip("-n", layout.bridge_ns, "link", "set", layout.node_port(index), "down")


def heal(layout: LabLayout, index: int) -> None:
    _ip("-n", layout.bridge_ns, "link", "set", layout.node_port(index), "up")


_libc: ctypes.CDLL | None = None


def _setns(ns: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(ns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in network namespace ``ns`` (in the caller's when ``ns`` is None).

    It runs in a fresh thread that enters the namespace and then ends, so the caller's
    threads stay where they are. Sockets made by ``fn`` stay in ``ns`` wherever they are
    used afterwards."""
    if ns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def inside() -> None:
        try:
            _setns(ns)
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=inside, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
