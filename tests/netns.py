"""A small lab of network namespaces for multi-node tests ("nodes" on one machine).

Each node is a network namespace with one interface, ``eth0``, and an address that exists
only inside the lab (``10.213.<lab>.<n>/24``). The nodes are joined by a bridge that lives
in a namespace of its own, so the root namespace is never touched. A node is cut off with
``partition(node)`` (its bridge port goes down) and joined again with ``heal(node)``.

Processes run inside a node with ``ip netns exec``; the test process itself reaches a node
through ``connect(node, host, port)``: a socket created by a thread that has entered the
node's namespace (``setns``), usable afterwards from any thread or event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_CLONE_NEWNET = 0x40000000


def available() -> str | None:
    """None if labs can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Node:
    name: str
    netns: str
    addr: str
    port_name: str  # its port on the bridge


class Lab:
    def __init__(self, lab_id: int | None = None) -> None:
        self.id = (os.getpid() % 200 + 20) if lab_id is None else lab_id
        self.prefix = f"ch{self.id}"
        self.bridge_ns = f"{self.prefix}-br"
        self.nodes: dict[str, Node] = {}
        _ip("netns", "add", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def add_node(self, name: str) -> Node:
        n = len(self.nodes) + 1
        node = Node(name, f"{self.prefix}-{name}", f"10.213.{self.id}.{n}", f"p{n}")
        _ip("netns", "add", node.netns)
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            node.netns,
            "type",
            "veth",
            "peer",
            "name",
            node.port_name,
            "netns",
            self.bridge_ns,
        )
        _ip("-n", node.netns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
        _ip("-n", node.netns, "link", "set", "eth0", "up")
        _ip("-n", node.netns, "link", "set", "lo", "up")
        _ip("-n", self.bridge_ns, "link", "set", node.port_name, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", node.port_name, "up")
        self.nodes[name] = node
        return node

    def partition(self, name: str) -> None:
        """Cut a node off from every other node (its link goes down)."""
        _ip("-n", self.bridge_ns, "link", "set", self.nodes[name].port_name, "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self.nodes[name].port_name, "up")

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.nodes[name].netns]

    def connect(self, name: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP socket connected from inside node ``name`` (non-blocking, TCP_NODELAY)."""
        result: list[socket.socket | BaseException] = []

        def inside() -> None:
            try:
                fd = os.open(f"/run/netns/{self.nodes[name].netns}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                s = socket.create_connection((host, port), timeout=timeout)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
                result.append(s)
            except BaseException as e:  # handed to the caller's thread
                result.append(e)

        t = threading.Thread(target=inside)  # the thread ends; its namespace goes with it
        t.start()
        t.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", node.netns)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", self.bridge_ns)
