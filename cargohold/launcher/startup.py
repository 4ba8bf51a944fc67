"""How the launcher starts a cluster's processes and knows they are up.

``Startup`` is a part of ``LocalCluster`` (``cluster.py``): the command line of etcd, a
manager and an agent; starting one detached in a session of its own, output appended to
its log in ``DIR/logs/`` after a start line; and waiting until a check passes (etcd's
/health, a manager's /healthz, the nodes ``up`` in the manager's node list), failing at
once, with the tail of its log, when a process exits while starting.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cargohold.control.transport import ClientCredentials
from cargohold.errors import CargoholdError
from cargohold.launcher import credentials, etcd_certs, netns
from cargohold.launcher.manager_http import get_json
from cargohold.launcher.processes import (
    EtcdProc,
    LauncherError,
    ManagerProc,
    NodeProc,
    Process,
    exit_code,
    log_tail,
    proc_stat,
    track,
)
from cargohold.logs import start_line
from cargohold.security import etcd as etcd_tls

# the package root, so every process runs the same cargohold as the launcher
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Startup:
    """Commands, spawning and readiness checks of ``LocalCluster``'s processes."""

    if TYPE_CHECKING:  # the fields and lookups of LocalCluster this part uses
        dir: str
        command: list[str]
        managers: list[ManagerProc]
        nodes: dict[str, NodeProc]
        etcd: EtcdProc | None
        etcd_binary: str
        plaintext: bool

        def api_answering(self) -> str: ...

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        env = dict(
            os.environ,
            PYTHONPATH=_SOURCE_ROOT + (os.pathsep + path if path else ""),
            PYTHONUNBUFFERED="1",
        )
        # disks added through the API may lie in the cluster's directory (its nodes' dirs)
        env.setdefault("CARGOHOLD_MANAGER_DISK_ROOTS", f"/var/lib/cargohold,{self.dir}")
        return env

    @property
    def credentials(self) -> ClientCredentials:
        """The launcher's own: the admin certificate and token (credentials.py)."""
        return credentials.client_credentials(self.dir)

    def _issue_credentials(self) -> None:
        """The CA and every certificate of the cluster, fresh (credentials.py)."""
        credentials.issue(
            self.dir,
            credentials.cluster_id(self.dir),
            [(m.id, m.listen.rsplit(":", 1)[0]) for m in self.managers],
            [(n.name, n.address, n.dir) for n in self.nodes.values()],
        )

    def _spawn(self, proc: Process, argv: list[str]) -> None:
        """Start ``argv`` detached in a session of its own (its process group is its PID)."""
        full = [*netns.exec_prefix(proc.netns), *argv]
        os.makedirs(os.path.dirname(proc.log), exist_ok=True)
        with open(proc.log, "ab") as log:
            log.write(start_line("cargohold launcher", shlex.join(full)))
            log.flush()
            try:
                p = subprocess.Popen(
                    full,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=self._env_of(proc),
                    cwd=self.dir,
                )
            except OSError as e:
                raise LauncherError(f"cannot start {proc.label} ({full[0]}): {e}") from None
        track(p)
        st = proc_stat(p.pid)
        proc.pid, proc.pgid, proc.started_at = p.pid, p.pid, time.time()
        proc.start_time = st[2] if st else None

    def _env_of(self, proc: Process) -> dict[str, str]:
        """An agent gets its own certificate (agent/<node>) as $CARGOHOLD_TLS_DIR."""
        env = self._env()
        env.pop("CARGOHOLD_TOKEN_FILE", None)
        if isinstance(proc, NodeProc):
            env["CARGOHOLD_TLS_DIR"] = str(credentials.agent_tls_dir(proc.dir))
        else:
            env.pop("CARGOHOLD_TLS_DIR", None)
        return env

    def _etcd_argv(self) -> list[str]:
        e = self.etcd
        assert e is not None
        os.makedirs(e.data_dir, mode=0o700, exist_ok=True)
        return [
            self.etcd_binary,
            "--name=cargohold",
            f"--data-dir={e.data_dir}",
            f"--listen-client-urls={e.client_url}",
            f"--advertise-client-urls={e.client_url}",
            f"--listen-peer-urls={e.peer_url}",
            f"--initial-advertise-peer-urls={e.peer_url}",
            f"--initial-cluster=cargohold={e.peer_url}",
            "--logger=zap",
            "--log-outputs=stderr",
            *(etcd_tls.server_flags(etcd_certs.member_dir(self.dir)) if self._etcd_tls else []),
        ]

    @property
    def _etcd_tls(self) -> bool:
        """etcd with TLS and client certificates (a cluster.json from before: plain)."""
        return self.etcd is not None and self.etcd.client_url.startswith("https://")

    def _state_path(self) -> str:
        return os.path.join(self.dir, "state.db")

    def _manager_argv(
        self, m: ManagerProc, init: bool = False, cluster_id: str | None = None
    ) -> list[str]:
        if self.etcd:
            state = f"etcd:{self.etcd.client_url}"
        else:
            state = f"sqlite:{self._state_path()}"
        argv = [*self.command, "manager", "--state", state, "--listen", m.listen]
        argv += ["--unix", m.unix, "--id", m.id, *(["--init"] if init else [])]
        if self._etcd_tls:
            argv += ["--etcd-tls-dir", etcd_certs.client_dir(self.dir)]
        argv += ["--tls-dir", str(credentials.manager_tls_dir(self.dir, m.id))]
        keys = os.path.join(self.dir, "keys")  # key-encryption keys (docs/keys.md)
        os.makedirs(keys, mode=0o700, exist_ok=True)
        default_kek = os.path.join(keys, "default")  # a local cluster's KEK: made once
        if not os.path.exists(default_kek):
            fd = os.open(default_kek, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
            finally:
                os.close(fd)
        argv += ["--key-dir", keys]
        if init:  # the first admin token, for the CLI
            argv += ["--admin-token-file", str(credentials.token_file(self.dir))]
        return [*argv, *(["--cluster-id", cluster_id] if cluster_id else [])]

    def _agent_argv(self, n: NodeProc) -> list[str]:
        disk = os.path.join(n.dir, "disk-0")
        os.makedirs(disk, exist_ok=True)
        argv = [*self.command, "agent", "--node", n.name]
        for m in self.managers:
            argv += ["--api", m.url]
        argv += ["--address", n.address, "--dir", n.dir, "--disk", disk]
        if n.zone:
            argv += ["--zone", n.zone]
        if n.metrics_port:  # the node's scrape target (docs/observability.md)
            argv += ["--metrics-port", str(n.metrics_port)]
        if not self.plaintext:
            # the data path over mutual TLS: the agent issues its replica server's, its own
            # and each engine's certificates from the cluster CA (docs/security.md says why
            # the local cluster does not join with tokens)
            argv += ["--ca-dir", str(credentials.ca_dir(self.dir))]
        return argv

    def _wait(
        self, procs: Sequence[Process], deadline: float, check: Callable[[], str | None]
    ) -> None:
        """Poll ``check`` (None: ready, else what is missing) until ``deadline``; fail at
        once when one of ``procs`` exits."""
        while True:
            for p in procs:
                if not p.running():
                    code = exit_code(p.pid)
                    how = f"exited with code {code}" if code is not None else "is gone"
                    tail = log_tail(p.log)
                    raise LauncherError(
                        f"{p.label} {how} while starting; see {p.log}"
                        + (f":\n{tail}" if tail else "")
                    )
            missing = check()
            if missing is None:
                return
            if time.monotonic() >= deadline:
                raise LauncherError(f"timed out: {missing}")
            time.sleep(0.1)

    def _etcd_health(self) -> str | None:
        e = self.etcd
        assert e is not None
        if self._etcd_tls:
            err = netns.call_in(e.netns, lambda: etcd_certs.health(self.dir, e.client_url))
            return f"etcd does not answer at {e.client_url} ({err}); see {e.log}" if err else None
        try:
            netns.call_in(e.netns, lambda: get_json(e.client_url, "/health", timeout=1.0))
        except CargoholdError as err:
            return f"etcd does not answer at {e.client_url} ({err}); see {e.log}"
        return None

    def _managers_health(self, managers: list[ManagerProc] | None = None) -> str | None:
        for m in managers or self.managers:
            try:
                get_json(m.api, "/healthz", timeout=1.0, credentials=self.credentials)
            except CargoholdError as err:
                return f"{m.id} does not answer at {m.api} ({err}); see {m.log}"
        return None

    def _nodes_health(self, nodes: list[NodeProc]) -> str | None:
        try:
            api = self.api_answering()
            seen = {
                n["name"]: n.get("state")
                for n in get_json(api, "/api/v1/nodes", credentials=self.credentials)
            }
        except CargoholdError as err:
            return f"cannot list nodes ({err}); see {self.managers[0].log}"
        # a cordoned node (from an earlier run's state) is up too: it heartbeats
        missing = [n for n in nodes if seen.get(n.name) not in ("up", "cordoned")]
        if not missing:
            return None
        states = ", ".join(
            f"{n.name} {seen[n.name]}" if n.name in seen else f"{n.name} not registered"
            for n in missing
        )
        logs = ", ".join(n.log for n in missing)
        return f"nodes not up ({states}); see {logs}"
