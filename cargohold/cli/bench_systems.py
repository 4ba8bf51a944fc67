"""What ``cargohold bench`` measures side by side, and the processes it starts for that:

- the target: an NBD endpoint (a volume's, an NBD URI's) or a throwaway local engine
  (``start_local_engine``: N replica servers on loopback and one engine, mutual TLS with a
  CA made for the run, as users run it);
- the baselines: a local file (fio's libaio, O_DIRECT: the disk's limit) and nbdkit's file
  plugin on a file beside it (C: the NBD protocol's cost without replication), when nbdkit
  is installed.

Every process is started here with its output in a log file in the run's directory and is
stopped by its PID (``Started.stop_all``: SIGTERM, then SIGKILL), on errors and Ctrl-C too.
Whose CPU counts for a target: the local engine's processes, or for a volume of a local
cluster the engine and replica servers its nodes' agent.json record (``cluster_pids``).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cargohold.cli import fio
from cargohold.errors import CargoholdError

VOLUME = "bench"
CLUSTER = "c-bench"


class BenchSetupError(CargoholdError):
    """A process ``cargohold bench`` starts did not come up."""


@dataclass
class System:
    key: str  # "target", "local" or "nbdkit"
    label: str
    uri: str | None = None  # NBD systems
    path: str | None = None  # the local file
    pids: list[int] = field(default_factory=list)  # whose CPU an operation costs
    control: str | None = None  # the local engine's control socket

    def command(self, w: fio.Workload, seconds: float, ramp: float, size: int) -> list[str]:
        if self.uri:
            return fio.fio_command(self.uri, w, seconds, ramp, size=size, name=self.key)
        assert self.path is not None
        return fio.file_command(self.path, w, seconds, ramp, size=size, name=self.key)


class Started:
    """Every process this run started, stopped in reverse order by its PID."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def launch(self, name: str, cmd: list[str], log_dir: str) -> tuple[subprocess.Popen, str]:
        log_path = os.path.join(log_dir, f"{name}.log")
        log = open(log_path, "w")
        env = dict(os.environ, CARGOHOLD_LOG=os.environ.get("CARGOHOLD_LOG", "WARNING"))
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append((name, p, log))
        return p, log_path

    def stop_all(self) -> None:
        while self.procs:
            _, p, log = self.procs.pop()
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()


def wait_for(p: subprocess.Popen, log_path: str, pattern: str, what: str, timeout: float) -> int:
    """The port ``pattern`` finds in the process's log; BenchSetupError if it ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path) as f:
            m = re.search(pattern, f.read())
        if m:
            return int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    with open(log_path) as f:
        tail = f.read()[-1500:]
    raise BenchSetupError(f"{what} did not start (its log, {log_path}):\n{tail}")


def control_request(path: str, request: dict[str, Any], timeout: float = 30.0) -> Any:
    """One request on an engine's control socket (JSON lines), its reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _issue(ca: Any, root: str, role: str, name: str) -> str:
    from cargohold.security.identity import Identity, Role

    where = os.path.join(root, f"{role}-{name}")
    ca.issue(Identity(CLUSTER, Role(role), name)).write(where)
    return where


def start_local_engine(work: str, replicas: int, size: int, started: Started) -> System:
    """``replicas`` replica servers on loopback and one engine over them (the first replica
    local), mutual TLS on every link; the engine's NBD endpoint on loopback."""
    from cargohold.replica.client import ReplicaClient
    from cargohold.security.ca import CertificateAuthority
    from cargohold.security.tls import Credentials

    pki = os.path.join(work, "pki")
    ca = CertificateAuthority.create(os.path.join(pki, "ca"), CLUSTER)
    py = [sys.executable, "-m", "cargohold"]
    servers: list[tuple[int, int]] = []  # (pid, port)
    for i in range(replicas):
        disk = os.path.join(work, f"node-{i}")
        os.makedirs(disk)
        cmd = [*py, "replica-server", "--listen", "127.0.0.1:0", "--disk", disk]
        cmd += ["--tls-dir", _issue(ca, pki, "replica", f"node-{i}")]
        p, log = started.launch(f"replica-server-{i}", cmd, work)
        port = wait_for(p, log, r"listening on [^ ]+:(\d+)", "a replica server", 30)
        servers.append((p.pid, port))
    agent = Credentials.load(_issue(ca, pki, "agent", "bench"))

    async def create() -> None:
        for i, (_, port) in enumerate(servers):
            rid = f"{VOLUME}-r{i}"
            c = await ReplicaClient.connect("127.0.0.1", port, tls=agent, replica=rid)
            try:
                await c.create(rid, size, volume=VOLUME)
            finally:
                await c.close()

    asyncio.run(create())
    control = os.path.join(work, "engine.ctl")
    cmd = [*py, "engine", "--volume", VOLUME, "--epoch", "1", "--listen", "127.0.0.1:0"]
    cmd += ["--control", control, "--local", f"{VOLUME}-r0"]
    cmd += ["--tls-dir", _issue(ca, pki, "engine", VOLUME)]
    for i, (_, port) in enumerate(servers):
        cmd += ["--replica", f"{VOLUME}-r{i}@127.0.0.1:{port}"]
    p, log = started.launch("engine", cmd, work)
    port = wait_for(p, log, r"nbd server listening on 127\.0\.0\.1:(\d+)", "the engine", 60)
    st = control_request(control, {"op": "status"})
    if st.get("robustness") != "healthy":
        raise BenchSetupError(f"the local engine is not healthy after its start: {st}")
    return System(
        "target",
        f"local engine, {replicas} replica{'s' if replicas > 1 else ''} (TLS)",
        uri=f"nbd://127.0.0.1:{port}/{VOLUME}",
        pids=[p.pid, *(pid for pid, _ in servers)],
        control=control,
    )


def nbdkit_available() -> str | None:
    """None if nbdkit's file plugin is here, else why not."""
    if shutil.which("nbdkit") is None:
        return "nbdkit is not installed (Debian: apt install nbdkit)"
    if subprocess.run(["nbdkit", "file", "--version"], capture_output=True).returncode != 0:
        return "nbdkit has no file plugin"
    return None


def _file(work: str, name: str, size: int) -> str:
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def start_nbdkit(work: str, size: int, started: Started) -> System:
    img = _file(work, "nbdkit.img", size)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p, log = started.launch(
        "nbdkit", ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file", img], work
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                raise BenchSetupError(f"nbdkit did not start (its log: {log})") from None
            time.sleep(0.05)
    return System("nbdkit", "nbdkit file plugin", uri=f"nbd://127.0.0.1:{port}/", pids=[p.pid])


def local_file(work: str, size: int) -> System:
    return System("local", "local file (O_DIRECT)", path=_file(work, "local.dat", size))


def cluster_pids(cluster_dir: str, volume: str) -> list[int]:
    """For a volume of a local cluster (``cargohold up --dir``): its engine's PID and every
    node's replica server's, from ``DIR/nodes/*/agent.json``; [] when nothing is recorded
    there (a remote cluster: its processes are not on this machine)."""
    engines, servers = [], []
    for path in sorted(glob.glob(os.path.join(cluster_dir, "nodes", "*", "agent.json"))):
        try:
            with open(path) as f:
                children = json.load(f).get("children") or {}
        except (OSError, ValueError):
            continue
        eng = (children.get("engines") or {}).get(volume) or {}
        if isinstance(eng.get("pid"), int):
            engines.append(eng["pid"])
        rs = children.get("replica_server") or {}
        if isinstance(rs.get("pid"), int):
            servers.append(rs["pid"])
    alive = [p for p in dict.fromkeys(engines + servers) if os.path.exists(f"/proc/{p}")]
    return alive if engines else []
