"""The node's own state on its disk: ``NODEDIR/agent.json`` (what must survive the agent:
the replica port, the engines' NBD ports, the children a restarted agent adopts, disks added
through the API), the node's disks, and the paths of the engines' control sockets. Used by
``cargohold.agent.agent``; pure file work, no asyncio.

agent.json (JSON object, rewritten whole through a temporary file):
``node``, ``replica_port``, ``engine_ports`` (volume -> NBD port), ``pids`` (every child's
PID), ``children`` (``replica_server``: {pid}, ``engines``: volume -> {pid, argv, port,
spec}), ``added_disks`` (DiskReport objects).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from typing import Any

from cargohold import durable
from cargohold.agent.disks import device_size, is_block_device, prepare_device
from cargohold.agent.engine_process import EngineProcess
from cargohold.agent.processes import ReplicaServerProcess
from cargohold.control.model import DiskReport, check_name

log = logging.getLogger("cargohold.agent")


def load(dir: str) -> dict[str, Any]:
    """agent.json of node directory ``dir``, or {} when there is none or it is unreadable."""
    path = os.path.join(dir, "agent.json")
    try:
        with open(path) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return {}


def save(
    dir: str,
    state: dict[str, Any],
    node: str,
    replica_port: int,
    replica_server: ReplicaServerProcess | None,
    engines: list[EngineProcess],
) -> None:
    """Persist what must survive the agent into ``state`` and agent.json: the replica port
    (the manager hands it to engines everywhere), the engines' NBD ports, the children's
    PIDs."""
    ports = state.setdefault("engine_ports", {})
    for eng in engines:
        if eng.port:
            ports[eng.volume] = eng.port
    pids = [e.pid for e in engines]
    if replica_server is not None:
        pids.append(replica_server.pid)
    # what a restarted agent needs to adopt the children (``Agent._adopt``)
    rs = replica_server
    children: dict[str, Any] = {
        "replica_server": {"pid": rs.pid} if rs is not None and rs.pid else {},
        "engines": {
            e.volume: {
                "pid": e.pid,
                "argv": e.child.argv,
                "port": e.port,
                "spec": e.spec.model_dump(mode="json"),
            }
            for e in engines
            if e.pid and e.child is not None
        },
    }
    state.update(
        node=node,
        replica_port=replica_port,
        pids=[p for p in pids if p],
        children=children,
    )
    path = os.path.join(dir, "agent.json")
    durable.write_atomic(path, json.dumps(state, indent=2).encode(), 0o644)


def configured(dir: str, disks: list[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
    """The disks given on the command line, or NODEDIR/disk-0."""
    return disks or [(os.path.join(dir, "disk-0"), None)]


def configured_paths(dir: str, disks: list[tuple[str, int | None]]) -> set[str]:
    return {os.path.abspath(p) for p, _ in configured(dir, disks)}


def node_disks(
    dir: str, disks: list[tuple[str, int | None]], state: dict[str, Any]
) -> list[DiskReport]:
    """The disks this node serves: those configured (a block device is formatted on first
    use and mounted under NODEDIR/disks/), then those added through the API earlier."""
    out: list[DiskReport] = []
    for i, (path, capacity) in enumerate(configured(dir, disks)):
        path = os.path.abspath(path)
        if is_block_device(path):  # a device: ext4 on first use, mounted under the node
            if capacity is None:
                capacity = device_size(path)
            path = prepare_device(path, os.path.join(dir, "disks", f"disk-{i}"))
        os.makedirs(path, exist_ok=True)
        name = os.path.basename(path.rstrip("/")).lower()
        try:
            check_name(name)
        except ValueError:
            name = f"disk-{i}"
        if name in {d.name for d in out}:
            name = f"disk-{i}"
        if capacity is None:
            capacity = shutil.disk_usage(path).total
        out.append(DiskReport(name=name, path=path, capacity_bytes=capacity))
    for extra in state.get("added_disks", []):  # added through the API earlier
        try:
            d = DiskReport.model_validate(extra)
        except ValueError:
            continue
        if d.path not in {x.path for x in out} and d.name not in {x.name for x in out}:
            os.makedirs(d.path, exist_ok=True)
            out.append(d)
    return out


def control_path(dir: str, volume: str) -> str:
    """The control socket of ``volume``'s engine: under NODEDIR/run/, or under the temporary
    directory when that path is too long for a unix socket."""
    path = os.path.join(dir, "run", f"{volume}.sock")
    if len(path.encode()) < 100:  # sun_path holds 108 bytes
        return path
    where = _short_dirs(dir)[0]
    os.makedirs(where, mode=0o700, exist_ok=True)
    return os.path.join(where, f"{volume}.sock")


def _short_dirs(dir: str) -> list[str]:
    """The temporary directories ``control_path`` and ``replica_socket`` use for a node
    directory whose sockets' paths would be too long for a unix socket."""
    short = hashlib.sha256(dir.encode()).hexdigest()[:12]
    base = tempfile.gettempdir()
    return [os.path.join(base, f"cargohold-{short}"), os.path.join(base, f"cargohold-{short}-rs")]


def remove_socket_dirs(dir: str) -> None:
    """Remove this node's temporary socket directories, and the sockets left in them, once
    everything the agent ran has stopped (its shutdown): a node directory with a long path
    otherwise leaves them behind in the temporary directory. Anything in them but a socket
    keeps its directory, and one that is not a directory of the agent's own (a symlink, or
    someone else's, as ``replica_socket`` refuses too) is never looked into."""
    for where in _short_dirs(dir):
        try:
            st = os.lstat(where)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            path = os.path.join(where, name)
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(where)


def replica_socket(dir: str) -> str | None:
    """The replica server's unix socket, through which this node's engines reach their local
    replica in clear: NODEDIR/run/replica-server/replica.sock (a temporary directory's
    ``cargohold-<hash>-rs/`` when that is too long for a unix socket). Its directory is made
    mode 0700 and must be the agent's own (root's on a node); one that is not (someone
    else made it first) is never used: None, and the engines use TLS over TCP instead."""
    where = os.path.join(dir, "run", "replica-server")
    if len(os.path.join(where, "replica.sock").encode()) >= 100:  # sun_path holds 108 bytes
        where = _short_dirs(dir)[1]
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        st = os.lstat(where)
        if st.st_uid != os.geteuid() or not os.path.isdir(where) or os.path.islink(where):
            raise PermissionError(f"{where} is not a directory of uid {os.geteuid()}")
        os.chmod(where, 0o700)
    except OSError as e:
        log.warning("no unix socket for the replica server (engines use TLS over TCP): %s", e)
        return None
    return os.path.join(where, "replica.sock")
