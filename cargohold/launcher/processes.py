"""The processes of a local cluster: the records ``DIR/cluster.json`` keeps of them, and
the /proc and process-group plumbing that checks, signals and stops them.

A ``Process`` (``EtcdProc``, ``ManagerProc``, ``NodeProc``) records a PID, its process
group and its start time; ``running()`` is true only while that PID is still the process
the launcher started (same start time, a cargohold or etcd command line), never a later
one that reuses the number. ``kill_group``, ``wait_gone`` and ``stop_processes`` signal and
wait for whole process groups; ``track`` keeps the ``Popen`` of each process this process
started, so that ``exit_code`` can say how one ended. Used by ``cargohold.launcher.cluster``
(``LocalCluster``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from cargohold.errors import CargoholdError


class LauncherError(CargoholdError):
    """The local cluster could not be started, changed or stopped."""


# --- what cluster.json records ---------------------------------------------------------


@dataclass(kw_only=True)
class Process:
    """A process of the cluster. ``start_time`` (clock ticks after boot, /proc/PID/stat)
    tells the process we started from a later one that reuses its PID."""

    log: str
    netns: str | None = None
    pid: int | None = None
    pgid: int | None = None
    start_time: int | None = None
    started_at: float | None = None

    @property
    def label(self) -> str:
        raise NotImplementedError

    def running(self) -> bool:
        return self.pid is not None and _is_ours(self.pid, self.start_time)


@dataclass(kw_only=True)
class EtcdProc(Process):
    client_url: str
    peer_url: str
    data_dir: str

    @property
    def label(self) -> str:
        return "etcd"


@dataclass(kw_only=True)
class ManagerProc(Process):
    id: str
    listen: str  # HOST:PORT
    unix: str

    @property
    def label(self) -> str:
        return self.id

    @property
    def url(self) -> str:
        return f"https://{self.listen}"  # TLS 1.3, certificates of DIR/ca (credentials.py)

    @property
    def api(self) -> str:
        return f"unix:{self.unix}"


@dataclass(kw_only=True)
class NodeProc(Process):
    name: str
    index: int
    address: str
    zone: str
    dir: str
    # process groups of earlier agents of this node that died alone: their children (the
    # replica server, engines) keep running and are adopted by the agent started next
    earlier_pgids: list[int] = dataclasses.field(default_factory=list)
    metrics_port: int = 0  # the agent's /metrics (0: none; clusters made before issue 20)

    def groups(self) -> list[int]:
        """Every process group holding this node's processes, the current agent's first."""
        return [g for g in [self.pgid, *self.earlier_pgids] if g is not None]

    @property
    def label(self) -> str:
        return self.name


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# --- processes: /proc, process groups -------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a process, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return rest[0], int(rest[2]), int(rest[19])


def _looks_ours(pid: int) -> bool:
    """Whether a process runs cargohold or etcd. Right after an exec the kernel shows an
    empty command line for a moment: that is asked again."""
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return False
        if cmdline:
            return b"cargohold" in cmdline or b"etcd" in cmdline
        time.sleep(0.01)
    return False


def _is_ours(pid: int, start_time: int | None) -> bool:
    st = proc_stat(pid)
    if st is None or st[0] in "ZX":
        _reap(pid)
        return False
    return (start_time is None or st[2] == start_time) and _looks_ours(pid)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[1] == pgid and st[0] not in "ZX":
                members.append(int(entry))
    return members


def kill_group(pgid: int | None, sig: int) -> bool:
    """Signal a process group of ours; False when it has no live process (left)."""
    if pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return False
    members = group_members(pgid)
    if not any(_looks_ours(p) for p in members):  # empty, or the number was reused
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    return True


_children: dict[int, subprocess.Popen[bytes]] = {}  # running processes this process started
_exit_codes: dict[int, int] = {}  # and how those that ended did


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _exit_codes[pid] = proc.returncode
        del _children[pid]


def track(proc: subprocess.Popen[bytes]) -> None:
    """Remember a process this process started, so that ``exit_code`` can tell how it ended."""
    _children[proc.pid] = proc
    _exit_codes.pop(proc.pid, None)


def exit_code(pid: int | None) -> int | None:
    if pid is None:
        return None
    _reap(pid)
    return _exit_codes.get(pid)


def wait_gone(procs: list[Process], deadline: float) -> list[Process]:
    """Wait until none of ``procs`` (nor their process groups) runs; return those still there."""
    while True:
        left = [p for p in procs if p.running() or (p.pgid is not None and kill_group(p.pgid, 0))]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop_processes(procs: list[Process], grace: float) -> None:
    """SIGTERM each process (it stops its own children), SIGKILL its group after ``grace``."""
    for p in procs:
        if p.pid is not None and p.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        else:  # its leader died (a crash): what is left of its group stops now
            kill_group(p.pgid, signal.SIGTERM)
    left = wait_gone(procs, time.monotonic() + grace)
    for p in left:
        kill_group(p.pgid, signal.SIGKILL)
        if p.pid is not None and p.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    left = wait_gone(left, time.monotonic() + 10)
    if left:
        raise LauncherError("could not stop " + ", ".join(f"{p.label} (pid {p.pid})" for p in left))
    for p in procs:
        p.pid = p.pgid = p.start_time = None


def log_tail(path: str, lines: int = 12) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
