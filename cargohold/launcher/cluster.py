"""A complete cargohold cluster on this machine: ``cargohold up`` / ``down`` and the node
and manager faults that tests and ``cargohold node kill|start`` inject.

``LocalCluster.create(...)`` plans a cluster in a directory; ``up()`` starts it in the
background — with ``backend="etcd"`` an etcd and (by default) two managers, else one
manager on SQLite — then one agent per node, each process detached in a session of its
own (an agent's replica server and engines share its process group, so a node dies as one
with ``kill_node``), output in ``DIR/logs/``. ``DIR/cluster.json`` records every process
(PID, process group, start time), address, namespace and API URL; ``LocalCluster.load(dir)``
reads it back in any later process. Processes are stopped only by the PIDs recorded there,
and only while they are still the processes we started (same start time, a cargohold or
etcd command line; the records and those checks are in ``cargohold.launcher.processes``).

With ``netns=True`` (root) every node lives in its own network namespace and the managers
in another, all on one bridge (``cargohold.launcher.netns``); the CLI still reaches the
manager through ``DIR/api.sock`` from the root namespace.

The commands run default to ``sys.executable -m cargohold manager|agent ...`` (the flags of
docs/control-plane.md); ``command=[...]`` or ``$CARGOHOLD_LAUNCHER_COMMAND`` replaces
``sys.executable -m cargohold`` (tests run stand-ins this way).

The parts of ``LocalCluster`` by role: ``startup.py`` (commands, spawning, readiness
checks), ``faults.py`` (kills, restarts, partitions), ``manager_http.py`` (``get_json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cargohold import durable
from cargohold.control.settings import ClientSettings
from cargohold.errors import CargoholdError, ConfigError, ManagerUnavailable
from cargohold.launcher import credentials, etcd_certs, monitoring, netns
from cargohold.launcher.faults import Faults
from cargohold.launcher.manager_http import get_json
from cargohold.launcher.netns import LabLayout
from cargohold.launcher.netns import available as netns_available
from cargohold.launcher.processes import (
    EtcdProc,
    LauncherError,
    ManagerProc,
    NodeProc,
    Process,
    free_ports,
    from_dict,
    group_members,
    kill_group,
    stop_processes,
)
from cargohold.launcher.settings import LauncherSettings

__all__ = ["ClusterRunning", "LocalCluster", "NoCluster", "default_dir", "get_json", "purge_dir"]

CLUSTER_FILE = "cluster.json"
MARKER_FILE = ".cargohold-cluster"  # DIR was made by the launcher: `down --purge` may remove it
LOCK_FILE = ".launcher.lock"
FORMAT_VERSION = 1
MAX_NODES = 16
MAX_MANAGERS = 5
COMMAND_ENV = LauncherSettings.variable("launcher_command")
ETCD_ENV = LauncherSettings.variable("etcd")
LAB_MANAGER_PORT = 9600  # inside the lab each manager has the namespace's ports to itself
LAB_ETCD_PORTS = (2379, 2380)
LAB_METRICS_PORT = 9470  # each node's agent's /metrics inside its namespace
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_UNIX_PATH_MAX = 107
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")

Progress = Callable[[str], None]


class ClusterRunning(LauncherError):
    """``up`` on a directory whose cluster is still running."""


class NoCluster(LauncherError):
    """No cluster was started in this directory (or it was stopped)."""


def default_dir() -> str:
    return os.path.expanduser(ClientSettings().dir or "~/.cargohold")


# --- the cluster ------------------------------------------------------------------------


@dataclass
class LocalCluster(Faults):
    """A cluster of local processes in ``dir``; see the module docstring."""

    dir: str
    backend: str
    command: list[str]
    managers: list[ManagerProc]
    nodes: dict[str, NodeProc]
    etcd: EtcdProc | None = None
    lab: LabLayout | None = None
    etcd_binary: str = "etcd"
    created_at: float = field(default_factory=time.time)
    # the state store holds this cluster (its first manager ran with --init): later starts
    # never pass --init, so a lost or emptied store is refused instead of made anew
    initialized: bool = False
    # the data path (replica servers, engines) without TLS: `cargohold up --plaintext`, for
    # benchmarks only (said loudly by every agent); else every node issues from DIR/ca
    plaintext: bool = False

    # -- planning and records --

    @classmethod
    def create(
        cls,
        dir: str,
        nodes: int = 3,
        zones: list[str] | None = None,
        netns: bool = False,
        backend: str = "sqlite",
        managers: int | None = None,
        command: list[str] | None = None,
        plaintext: bool = False,
    ) -> LocalCluster:
        """Plan a cluster (nothing starts before ``up``). Raises ConfigError on bad input."""
        dir = os.path.abspath(os.path.expanduser(dir))
        if not 1 <= nodes <= MAX_NODES:
            raise ConfigError(f"--nodes must be 1 to {MAX_NODES}, not {nodes}")
        zones = [z.strip() for z in zones or [] if z.strip()]
        for z in zones:
            if not _LABEL.match(z):
                raise ConfigError(f"zone {z!r} is not a DNS label (1-63 of a-z, 0-9, '.', '-')")
        if backend not in ("sqlite", "etcd"):
            raise ConfigError(f"--backend must be sqlite or etcd, not {backend!r}")
        count = managers if managers is not None else (2 if backend == "etcd" else 1)
        if not 1 <= count <= MAX_MANAGERS:
            raise ConfigError(f"managers must be 1 to {MAX_MANAGERS}, not {count}")
        if backend == "sqlite" and count > 1:
            raise ConfigError("SQLite serves one manager; use --backend etcd for several")
        if len(os.path.join(dir, f"api-{count}.sock")) > _UNIX_PATH_MAX:
            raise ConfigError(
                f"{dir} is too long a path for the API's unix socket; pick a shorter --dir"
            )
        if command is None:
            env = LauncherSettings().launcher_command
            command = shlex.split(env) if env else [sys.executable, "-m", "cargohold"]
        etcd_binary = LauncherSettings().etcd or shutil.which("etcd") or "/usr/bin/etcd"
        if backend == "etcd" and not os.access(etcd_binary, os.X_OK):
            raise ConfigError("--backend etcd needs etcd (Debian: apt install etcd-server)")
        lab = None
        if netns:
            why = netns_available()
            if why:
                raise ConfigError(why)
            lab = LabLayout.for_dir(dir)

        logs = os.path.join(dir, "logs")
        ports = free_ports(count + 2 + nodes)  # managers, etcd's two, each agent's /metrics
        host = lab.manager_address if lab else "127.0.0.1"
        etcd = None
        if backend == "etcd":
            client, peer = LAB_ETCD_PORTS if lab else (ports[count], ports[count + 1])
            etcd = EtcdProc(
                log=os.path.join(logs, "etcd.log"),
                netns=lab.manager_ns if lab else None,
                client_url=f"https://127.0.0.1:{client}",  # TLS, client certificates
                peer_url=f"https://127.0.0.1:{peer}",
                data_dir=os.path.join(dir, "etcd"),
            )
        mgrs = [
            ManagerProc(
                id=f"manager-{i}",
                log=os.path.join(logs, f"manager-{i}.log"),
                netns=lab.manager_ns if lab else None,
                listen=f"{host}:{LAB_MANAGER_PORT + i - 1 if lab else ports[i - 1]}",
                unix=os.path.join(dir, "api.sock" if i == 1 else f"api-{i}.sock"),
            )
            for i in range(1, count + 1)
        ]
        node_procs = {}
        for i in range(1, nodes + 1):
            name = f"node-{i}"
            node_procs[name] = NodeProc(
                name=name,
                index=i,
                log=os.path.join(logs, f"{name}.log"),
                netns=lab.node_ns(i) if lab else None,
                address=lab.node_address(i) if lab else "127.0.0.1",
                zone=zones[(i - 1) % len(zones)] if zones else "",
                dir=os.path.join(dir, "nodes", name),
                metrics_port=LAB_METRICS_PORT if lab else ports[count + 2 + i - 1],
            )
        return cls(
            dir,
            backend,
            list(command),
            mgrs,
            node_procs,
            etcd,
            lab,
            etcd_binary,
            plaintext=plaintext,
        )

    @classmethod
    def load(cls, dir: str) -> LocalCluster:
        """The cluster recorded in ``DIR/cluster.json``; NoCluster if there is none."""
        dir = os.path.abspath(os.path.expanduser(dir))
        path = os.path.join(dir, CLUSTER_FILE)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NoCluster(
                f"no cluster in {dir} (no {CLUSTER_FILE}); start one with `cargohold up`"
            ) from None
        except ValueError as e:
            raise LauncherError(f"{path} is not valid JSON: {e}") from None
        if data.get("version") != FORMAT_VERSION:
            raise LauncherError(
                f"{path} has format version {data.get('version')}, expected {FORMAT_VERSION}"
            )
        lab = data.get("lab")
        return cls(
            dir=dir,
            backend=data["backend"],
            command=data["command"],
            managers=[from_dict(ManagerProc, m) for m in data["managers"]],
            nodes={n: from_dict(NodeProc, v) for n, v in data["nodes"].items()},
            etcd=from_dict(EtcdProc, data["etcd"]) if data.get("etcd") else None,
            lab=LabLayout(lab["prefix"], lab["subnet"]) if lab else None,
            etcd_binary=data.get("etcd_binary", "etcd"),
            created_at=data.get("created_at", 0.0),
            initialized=data.get("initialized", True),  # older cluster.json: it has run
            plaintext=data.get("plaintext", False),
        )

    def reload(self) -> None:
        """Re-read cluster.json (another process may have killed or started something)."""
        fresh = LocalCluster.load(self.dir)
        self.managers, self.nodes, self.etcd = fresh.managers, fresh.nodes, fresh.etcd

    def to_json(self) -> dict[str, Any]:
        lab = self.lab
        return {
            "version": FORMAT_VERSION,
            "dir": self.dir,
            "api": self.api,
            "api_tcp": self.managers[0].url,
            "apis": [m.api for m in self.managers],
            "backend": self.backend,
            "netns": lab is not None,
            "lab": None
            if lab is None
            else {
                "prefix": lab.prefix,
                "subnet": f"{lab.subnet}.0/24",
                "bridge_netns": lab.bridge_ns,
                "manager_netns": lab.manager_ns,
                "manager_address": lab.manager_address,
            },
            "command": self.command,
            "etcd_binary": self.etcd_binary,
            "created_at": self.created_at,
            "initialized": self.initialized,
            "plaintext": self.plaintext,
            "managers": [dataclasses.asdict(m) for m in self.managers],
            "etcd": dataclasses.asdict(self.etcd) if self.etcd else None,
            "nodes": {n: dataclasses.asdict(v) for n, v in self.nodes.items()},
        }

    def save(self) -> None:
        path = os.path.join(self.dir, CLUSTER_FILE)
        durable.write_atomic(path, (json.dumps(self.to_json(), indent=2) + "\n").encode(), 0o644)

    # -- what clients use --

    @property
    def api(self) -> str:
        """The API URL for clients: the first manager's unix socket (reachable from the
        root namespace even when the managers live in a namespace)."""
        return self.managers[0].api

    @property
    def apis(self) -> list[str]:
        return [m.api for m in self.managers]

    @property
    def api_tcp(self) -> str:
        return self.managers[0].url

    @property
    def processes(self) -> list[Process]:
        return [*([self.etcd] if self.etcd else []), *self.managers, *self.nodes.values()]

    def running(self) -> bool:
        """True while any recorded process of the cluster still runs."""
        return any(p.running() for p in self.processes)

    def node_processes(self, name: str) -> list[int]:
        """The live PIDs of a node: its agent and everything in its process group."""
        node = self._node(name)
        return sorted(p for g in node.groups() for p in group_members(g))

    def api_answering(self) -> str:
        """The API URL of a manager that answers /healthz now (ManagerUnavailable if none)."""
        errors = []
        for m in self.managers:
            try:
                get_json(m.api, "/healthz", timeout=2.0, credentials=self.credentials)
                return m.api
            except CargoholdError as e:
                errors.append(str(e))
        raise ManagerUnavailable("no manager answers: " + "; ".join(errors))

    # -- up and down --

    def up(self, timeout: float = 60.0, progress: Progress | None = None) -> LocalCluster:
        """Start everything and return once every node is up; on failure stop it all again."""
        say = progress or (lambda _msg: None)
        deadline = time.monotonic() + timeout
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        with open(os.path.join(self.dir, MARKER_FILE), "a"):
            pass
        with self._locked():
            self._refuse_if_running()
            try:
                if self.lab:
                    netns.create(self.lab, len(self.nodes))
                    say(
                        f"made network namespaces {self.lab.prefix}-* on a bridge, "
                        f"subnet {self.lab.subnet}.0/24"
                    )
                if self.etcd and self._etcd_tls:
                    etcd_certs.issue(self.dir)  # the cluster's CA (made here if new), etcd's
                if self.etcd:
                    self._spawn(self.etcd, self._etcd_argv())
                    self.save()
                    say(f"started etcd (pid {self.etcd.pid}) at {self.etcd.client_url}")
                    self._wait([self.etcd], deadline, self._etcd_health)
                init = not self.initialized and not (
                    self.backend == "sqlite" and os.path.exists(self._state_path())
                )
                self._issue_credentials()
                say(f"issued certificates of the cluster's CA ({self.dir}/ca)")
                for i, m in enumerate(self.managers):
                    first = init and i == 0  # makes the cluster, under the CA's id
                    cid = credentials.cluster_id(self.dir) if first else None
                    self._spawn(m, self._manager_argv(m, init=first, cluster_id=cid))
                    self.save()
                    say(f"started {m.id} (pid {m.pid}): API on {m.listen} and {m.unix}")
                    if init and i == 0:  # the others find the cluster it made
                        self._wait([m], deadline, functools.partial(self._managers_health, [m]))
                        say(f"{m.id} created a new cluster (--init)")
                self._wait(self.managers, deadline, self._managers_health)
                if not self.initialized:
                    self.initialized = True
                    self.save()
                for n in self.nodes.values():
                    self._spawn(n, self._agent_argv(n))
                    self.save()
                    zone = f", zone {n.zone}" if n.zone else ""
                    where = f" in namespace {n.netns}" if n.netns else ""
                    say(f"started {n.name} agent (pid {n.pid}) at {n.address}{zone}{where}")
                nodes = list(self.nodes.values())
                self._wait(nodes, deadline, lambda: self._nodes_health(nodes))
                path = monitoring.write_scrape_config(self)
                say(f"wrote a Prometheus scrape config: {path} (docs/observability.md)")
            except BaseException:
                self._teardown()
                raise
        return self

    def down(self, purge: bool = False, grace: float = STOP_GRACE) -> list[str]:
        """Stop agents, then managers, then etcd; delete the namespaces; with ``purge``
        remove DIR. Returns what was stopped, in words."""
        with self._locked():
            with contextlib.suppress(NoCluster):
                self.reload()
            stopped = self._teardown(grace)
        if purge:
            purge_dir(self.dir)
        return stopped

    # -- internals --

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One launcher at a time changes a cluster (flock on DIR/.launcher.lock)."""
        if not os.path.isdir(self.dir):
            raise NoCluster(f"no cluster in {self.dir} (no such directory)")
        fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LauncherError(
                            f"another cargohold command has been changing {self.dir} for 30 s"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def _refuse_if_running(self) -> None:
        try:
            old = LocalCluster.load(self.dir)
        except NoCluster:
            return
        except LauncherError:
            return  # an unreadable record: nothing of it can be stopped safely anyway
        live = [p for p in old.processes if p.running()]
        if live:
            what = ", ".join(f"{p.label} pid {p.pid}" for p in live[:4])
            raise ClusterRunning(
                f"a cluster is already running in {self.dir} ({what}); "
                f"stop it with `cargohold down --dir {self.dir}`"
            )
        old._teardown(grace=2.0)  # leftovers of a crashed run: stray groups, namespaces

    def _teardown(self, grace: float = STOP_GRACE) -> list[str]:
        stopped = []
        for group in (list(self.nodes.values()), self.managers, [self.etcd] if self.etcd else []):
            names = [f"{p.label} (pid {p.pid})" for p in group if p.running()]
            stop_processes(list(group), grace)
            stopped += names
        for n in self.nodes.values():  # adopted children the agent could not stop
            for g in n.earlier_pgids:
                kill_group(g, signal.SIGKILL)
            n.earlier_pgids = []
        for p in self.managers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p.unix)
        if self.lab:
            gone = netns.destroy(self.lab)
            if gone:
                stopped.append(f"network namespaces {', '.join(gone)}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, CLUSTER_FILE))
        return stopped


def purge_dir(dir: str) -> None:
    """Remove a cluster's directory — only one the launcher made, and only when nothing of
    its cluster runs."""
    dir = os.path.abspath(os.path.expanduser(dir))
    if not os.path.isdir(dir):
        return
    if not os.path.exists(os.path.join(dir, MARKER_FILE)):
        raise LauncherError(
            f"{dir} was not made by `cargohold up` ({MARKER_FILE} missing); not removing it"
        )
    try:
        if LocalCluster.load(dir).running():
            raise ClusterRunning(f"the cluster in {dir} is running; `cargohold down` first")
    except NoCluster:
        pass
    shutil.rmtree(dir)
