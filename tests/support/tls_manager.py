"""A real ``cargohold manager`` process over HTTPS with real certificates, for the tests of
the REST API: a cluster CA in a temporary directory, a certificate per role on demand, and
httpx clients that present them (or a bearer token, or nothing).

    m = TlsManager(tmp_path); m.start()
    with m.client("admin", "alice") as c: c.get("/api/v1/volumes")
    with m.client(None) as c: ...           # TLS, no certificate, no token
    with m.client(token=m.admin_token) as c: ...
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cargohold.control.identity import new_cluster_id
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TlsManager:
    """One manager process of ours (stopped by its PID) and the CA of its cluster."""

    def __init__(self, dir: Path, env: dict[str, str] | None = None) -> None:
        self.dir = dir
        self.cluster = new_cluster_id()
        self.ca = CertificateAuthority.create(dir / "ca", self.cluster)
        self.db = dir / "state.db"
        self.log_path = dir / "manager.log"
        self.unix = str(dir / "api.sock")
        self.token_file = dir / "admin-token"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""
        self.creds("manager", "mgr-test")

    def creds(self, role: str, name: str, tenant: str | None = None, **kw: object) -> Path:
        """The credentials directory of ``role/name`` (issued the first time)."""
        d = self.dir / "creds" / f"{role}-{name}-{tenant or ''}"
        if not (d / "tls.crt").exists():
            ident = Identity(self.cluster, Role(role), name, tenant)
            self.ca.issue(ident, hosts=["127.0.0.1"], **kw).write(d)  # type: ignore[arg-type]
        return d

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def start(self, init: bool = True, timeout: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "cargohold", "manager", "--state", f"sqlite:{self.db}"]
        cmd += ["--listen", f"127.0.0.1:{self.port}", "--unix", self.unix, "--id", "mgr-test"]
        cmd += ["--tls-dir", str(self.creds("manager", "mgr-test"))]
        if init:
            cmd += ["--init", "--cluster-id", self.cluster]
            cmd += ["--admin-token-file", str(self.token_file)]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CARGOHOLD_LOG": "WARNING",
            # nodes registered by tests never heartbeat: keep them up for the whole test
            "CARGOHOLD_MANAGER_NODE_DOWN_AFTER": "600",
            **self.env,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the manager exited:\n{self.output()}")
            try:
                with self.client(None, timeout=1) as c:
                    if c.get("/livez").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the manager did not start:\n{self.output()}")

    def trust(self) -> ssl.SSLContext:
        """A client context that verifies the manager and presents no certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(self.dir / "ca" / "trust.crt"))
        return ctx

    def context(
        self, role: str | None, name: str = "", tenant: str | None = None
    ) -> ssl.SSLContext:
        if role is None:
            return self.trust()
        return Credentials.load(self.creds(role, name or role, tenant)).client_context()

    def client(
        self,
        role: str | None,
        name: str = "",
        *,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 10.0,
    ) -> httpx.Client:
        """An httpx client over HTTPS presenting ``role/name``'s certificate (None: none)
        and/or a bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url,
            verify=self.context(role, name, tenant),
            headers=headers,
            timeout=timeout,
        )

    def unix_client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url="http://cargohold",
            transport=httpx.HTTPTransport(uds=self.unix),
            headers=headers,
            timeout=10,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
