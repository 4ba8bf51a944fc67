"""Child processes of the node agent: the node's replica server and one engine per volume.

The agent runs them as ``python -m cargohold replica-server ...`` and ``... engine ...`` (the
agent's own interpreter, so a venv works), never embedded: a crashing engine takes down
one volume, not the node. Children stay in the agent's process group — ``cargohold node
kill`` SIGKILLs that group to simulate a node crash — and write stdout and stderr to log
files under ``NODEDIR/logs/``, where the agent reads back why one exited.

Used by ``cargohold.agent.replicas`` (the replica server) and
``cargohold.agent.engine_process`` (an engine's child); nothing here talks to the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from cargohold.constants import RECOVERED, RECOVERING
from cargohold.control.model import EngineAssignment, check_name
from cargohold.errors import CargoholdError
from cargohold.logs import start_line
from cargohold.replica.client import ReplicaClient
from cargohold.security.tls import Credentials
from cargohold.settings import ProcessSettings

log = logging.getLogger("cargohold.agent")

NBD_LISTENING = re.compile(rb"nbd server listening on (\S+)")
STOP_TIMEOUT = 10.0  # seconds a child gets between SIGTERM and SIGKILL
STABLE_AFTER = 10.0  # a child that ran this long before it died restarts without delay
REPLICA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SPEC = re.compile(r"^(?P<id>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(host: str) -> int:
    """A TCP port nobody listens on now (it may be taken before it is used: callers that
    fail to bind pick another)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def spawn_prefix() -> list[str]:
    """The command the long-lived children are started through (``CARGOHOLD_SPAWN_PREFIX``,
    docs/upgrades.md); [] when unset."""
    return shlex.split(ProcessSettings().spawn_prefix)


class Child:
    """One child process: started, watched (``alive``), stopped (SIGTERM, then SIGKILL), its
    output in an append-only log file of which the agent reads the part since the start."""

    def __init__(self, name: str, argv: list[str], log_path: str) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.log_offset = 0

    def start(self, pass_fds: tuple[int, ...] = ()) -> None:
        """Start it; ``pass_fds``: descriptors the child inherits (an encrypted volume's
        engine reads its data key from one: never argv, the environment or a file)."""
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the agent's own certificate is not its children's: each gets --tls-dir or
        # --plaintext on its command line (agent/credentials.py)
        env.pop(ProcessSettings.variable("tls_dir"), None)
        with open(self.log_path, "ab") as f:
            f.write(start_line("agent starts", " ".join(self.argv)))
            f.flush()
            self.log_offset = f.tell()
            # same process group as the agent: no start_new_session (see module docstring)
            # through the spawn prefix (an exec'ing wrapper such as systemd-run --scope:
            # same PID, the same command line, so adoption's checks hold)
            self.proc = subprocess.Popen(
                [*spawn_prefix(), *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=pass_fds,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.pid is not None else 0.0

    def output(self, limit: int = 1 << 20) -> bytes:
        """What the child wrote since it was started (its first ``limit`` bytes)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read(limit)
        except OSError:
            return b""

    def tail(self, lines: int = 5, limit: int = 600) -> str:
        """The last lines the child wrote since it was started: why it exited."""
        try:
            with open(self.log_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(self.log_offset, end - 8192))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        kept = [x.strip() for x in text.splitlines() if x.strip()][-lines:]
        return " | ".join(kept)[-limit:]

    def exit_reason(self) -> str:
        rc = self.returncode
        if rc is None:
            return ""
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        tail = self.tail()
        return f"{self.name} {how}" + (f": {tail}" if tail else "")

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> bool:
        """Wait for the child to exit; -> True if it did within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (a clean shutdown: engines flush and close), SIGKILL after ``timeout``."""
        if self.pid is None:
            return None
        self.signal(signal.SIGTERM)
        if not await self.wait(timeout):
            log.warning(
                "%s (pid %d) ignored SIGTERM for %g s: killing it",
                self.name,
                self.pid,
                timeout,
            )
            self.signal(signal.SIGKILL)
            await self.wait(30.0)
        return self.returncode


class AdoptedChild(Child):
    """A child an earlier agent of this node started and left running when it died alone
    (SIGKILL, a crash): the new agent adopts it instead of restarting it, so the data path
    never stops for an agent restart. It is watched and signalled by PID; it is not our
    child, so its exit status is unknown (its parent is now init)."""

    def __init__(self, name: str, argv: list[str], log_path: str, pid: int) -> None:
        super().__init__(name, argv, log_path)
        self._pid = pid
        self.started_at = time.monotonic()
        try:
            self.log_offset = os.path.getsize(log_path)
        except OSError:
            self.log_offset = 0

    def start(self, pass_fds: tuple[int, ...] = ()) -> None:
        raise RuntimeError(f"{self.name} (pid {self._pid}) was adopted: it is not started again")

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        return _exists(self._pid)

    @property
    def returncode(self) -> int | None:
        return None if self.alive else -1

    def exit_reason(self) -> str:
        if self.alive:
            return ""
        tail = self.tail()
        how = "exited (adopted from an earlier agent: its exit status is unknown)"
        return f"{self.name} {how}" + (f": {tail}" if tail else "")

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)


def runs_argv(pid: object, argv: list[str]) -> bool:
    """Whether process ``pid`` is alive and runs exactly ``argv`` (the interpreter aside):
    a child an earlier agent started, never a later process that reuses the number."""
    if not isinstance(pid, int) or pid <= 1 or pid == os.getpid() or not _exists(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return False
    return len(cmd) == len(argv) and cmd[1:] == argv[1:]


def cargohold_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cargohold", *args]


def tls_argv(tls_dir: str | None) -> list[str]:
    """A child's credentials directory as arguments, or ``--plaintext`` (agent/credentials.py)."""
    return ["--tls-dir", tls_dir] if tls_dir else ["--plaintext"]


def replica_server_argv(
    node: str,
    host: str,
    port: int,
    disks: list[str],
    tls_dir: str | None = None,
    unix: str | None = None,
) -> list[str]:
    """``unix``: also on this socket (mode 0600 in the agent's 0700 directory), which the
    engines of this node reach their local replica through (docs/security.md)."""
    argv = cargohold_argv("replica-server", "--listen", hostport(host, port), "--node", node)
    for d in disks:
        argv += ["--disk", d]
    if unix:
        argv += ["--unix", unix]
    return argv + tls_argv(tls_dir)


def engine_argv(
    volume: str,
    epoch: int,
    replicas: list[str],
    local: str | None,
    host: str,
    port: int,
    control: str,
    require: tuple[int, int] = (0, 0),
    last_scrub_at: float = 0.0,
    epoch_jump: bool = False,
    node: str = "",
    tls_dir: str | None = None,
    qos: dict | None = None,
    read_only: bool = False,
    data_key_fd: int | None = None,
    encryption_key_id: str | None = None,
    local_unix: str | None = None,
) -> list[str]:
    """``data_key_fd``/``encryption_key_id``: an encrypted volume; the caller starts the
    engine with that descriptor passed (``pass_fds``), holding the 32-byte data key, and
    closes its copy: the key never goes to argv (docs/encryption.md)."""
    argv = cargohold_argv("engine", "--volume", volume, "--epoch", str(epoch))
    if read_only:  # a read-only attach: NBD clients may only read
        argv.append("--read-only")
    if epoch_jump:  # after `volume recover-epoch`: replicas far below this epoch
        argv.append("--epoch-jump")
    for spec in replicas:
        argv += ["--replica", spec]
    if local:
        argv += ["--local", local]
        if local_unix:  # the local replica through its server's unix socket, in clear
            argv += ["--local-unix", local_unix]
    argv += ["--listen", hostport(host, port), "--control", control]
    if require != (0, 0):
        argv += ["--require", f"{require[0]}:{require[1]}"]
    if last_scrub_at > 0:  # the next periodic scrub counts from the volume's last one
        argv += ["--last-scrub-at", f"{last_scrub_at:.3f}"]
    if node:  # the volume is attached here: agent/NODE may use its NBD endpoint over TLS
        argv += ["--node", node]
    if qos:  # the volume's QoS limits to start with (changed online with the op qos)
        argv += ["--qos", json.dumps(qos, sort_keys=True)]
    if data_key_fd is not None and encryption_key_id:  # an encrypted volume
        argv += ["--data-key-fd", str(data_key_fd), "--encryption-key-id", encryption_key_id]
    return argv + tls_argv(tls_dir)


def check_engine(a: EngineAssignment) -> None:
    """Refuse an engine assignment the agent cannot run safely (names end up in paths)."""
    check_name(a.volume, "volume name")
    if a.epoch < 1:
        raise ValueError(f"epoch must be at least 1, got {a.epoch}")
    if not a.replicas:
        raise ValueError("no replicas")
    ids = []
    for spec in a.replicas:
        m = SPEC.match(spec)
        if m is None or not REPLICA_ID.match(m["id"]) or not 0 < int(m["port"]) < 65536:
            raise ValueError(f"replica {spec!r} is not ID@HOST:PORT")
        ids.append(m["id"])
    if len(set(ids)) != len(ids):
        raise ValueError(f"a replica is listed twice: {a.replicas}")
    if a.local is not None and a.local not in ids:
        raise ValueError(f"local replica {a.local!r} is not one of {ids}")
    if a.require_epoch < 0 or a.require_generation < 0:
        raise ValueError("require_epoch and require_generation must not be negative")


def nbd_listening(child: Child) -> str | None:
    """The address an engine child says its NBD server listens on, once it does."""
    m = NBD_LISTENING.search(child.output())
    return m.group(1).decode() if m else None


def stop_leftovers(pids: list[int], markers: list[str], timeout: float = STOP_TIMEOUT) -> None:
    """Stop children an earlier agent of this node left running (it died alone, not with
    its process group): they hold the replica port and the engines' sockets. A PID counts
    only if its command line is a cargohold one that names one of ``markers`` (the node
    directory, the disks), so a reused PID of some other program is never touched."""
    mine = []
    for pid in pids:
        if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "cargohold" in cmd and any(m in cmd for m in markers):
            log.warning("stopping pid %d left over by an earlier agent: %s", pid, cmd[:200])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            mine.append(pid)
    deadline = time.monotonic() + timeout
    for pid in mine:
        while _exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exists(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"  # a zombie of another parent is as good as gone


@dataclass
class Backoff:
    """Delays between restarts of something that keeps failing: first, doubled, at most."""

    first: float = 0.5
    most: float = 30.0
    failures: int = 0
    not_before: float = 0.0

    def failed(self) -> float:
        self.failures += 1
        delay = min(self.first * 2 ** (self.failures - 1), self.most)
        self.not_before = time.monotonic() + delay
        return delay

    def reset(self) -> None:
        self.failures, self.not_before = 0, 0.0

    @property
    def due(self) -> bool:
        return time.monotonic() >= self.not_before


class ReplicaServerProcess:
    """The node's replica server: one child, always on the same port (the manager hands
    ``ID@ADDRESS:PORT`` of this node's replicas to engines everywhere)."""

    def __init__(
        self,
        node: str,
        host: str,
        port: int,
        disks: list[str],
        log_path: str,
        tls_dir: str | None = None,
        tls: Credentials | None = None,
        unix: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.unix = unix  # its unix socket, for this node's engines (None: TCP only)
        self.argv = replica_server_argv(node, host, port, disks, tls_dir, unix)
        self.tls = tls  # what the agent connects to it with (None: plain TCP)
        self.log_path = log_path
        self.child: Child | None = None
        self.backoff = Backoff()
        self._exit_noted = False

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.alive and self.child else None

    async def start(self, timeout: float = 30.0) -> None:
        """Start it and return once it answers LIST; raise with its last words if it does not.
        While it recovers replicas after a machine crash (it reads their written data before
        it listens: docs/formats/replica-store.md, "Machine crashes") the wait has no end
        but its exit: stopped and started again, it would begin that recovery again. Once
        the recovery ended, the server has ``timeout`` again to listen (with worker
        processes, the parent listens only after the last worker's recovery)."""
        self.child = Child("replica server", self.argv, self.log_path)
        self.child.start()
        self._exit_noted = False
        deadline = time.monotonic() + timeout
        why = ""
        while time.monotonic() < deadline:
            if self.recovering():
                deadline = time.monotonic() + timeout
            if not self.child.alive:
                self._exit_noted = True
                raise CargoholdError(
                    f"the replica server did not start: {self.child.exit_reason()}"
                )
            try:
                c = await self.client(timeout=1.0)
                try:
                    await asyncio.wait_for(c.list(), 2.0)
                    return
                finally:
                    await c.close()
            except (CargoholdError, OSError, TimeoutError) as e:
                why = str(e)
            await asyncio.sleep(0.1)
        await self.child.stop()
        raise CargoholdError(
            f"the replica server did not answer on {hostport(self.host, self.port)} within "
            f"{timeout:g} s ({why}); its log: {self.log_path}"
        )

    def recovering(self) -> bool:
        """Whether the server is recovering a replica after a machine crash now: its log has
        a RECOVERING line with no RECOVERED line after it."""
        if self.child is None:
            return False
        out = self.child.output()
        return out.count(RECOVERING.encode()) > out.count(RECOVERED.encode())

    async def adopt(self, pid: int) -> bool:
        """Take over a replica server an earlier agent left running with these very
        arguments, if it answers LIST; -> whether it was adopted."""
        if not runs_argv(pid, self.argv):
            return False
        try:
            c = await self.client(timeout=2.0)
            try:
                await asyncio.wait_for(c.list(), 2.0)
            finally:
                await c.close()
        except (CargoholdError, OSError, TimeoutError) as e:
            log.warning("not adopting the replica server (pid %d): it does not answer: %s", pid, e)
            return False
        self.child = AdoptedChild("replica server", self.argv, self.log_path, pid)
        self._exit_noted = False
        return True

    async def client(self, timeout: float = 2.0, replica: str | None = None) -> ReplicaClient:
        """A connection to it (for OPEN, CREATE or DELETE of ``replica``: routed to the
        worker that owns it)."""
        return await ReplicaClient.connect(
            self.host, self.port, timeout=timeout, tls=self.tls, replica=replica
        )

    def exited(self) -> str | None:
        """-> why it exited, the first time an exit is seen."""
        if self.child is None or self.child.alive or self._exit_noted:
            return None
        self._exit_noted = True
        if self.child.uptime >= STABLE_AFTER:
            self.backoff.reset()
        return self.child.exit_reason()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop()
