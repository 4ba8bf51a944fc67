"""Start and stop a real, single-member etcd for tests: no mocks.

    from tests.etcd_proc import EtcdProcess, etcd_fixture

    etcd = etcd_fixture()            # a fixture (session scope by default) in any test file

    def test_something(etcd: EtcdProcess) -> None:
        url = etcd.url               # "http://127.0.0.1:PORT"

    with EtcdProcess() as etcd:      # or directly, anywhere
        ...

It runs ``/usr/bin/etcd`` (Debian's etcd-server, installed by scripts/setup.sh; override
with ``$CARGOHOLD_ETCD``) on free loopback ports with a temporary data directory, waits
until ``/v3/kv/range`` answers, and stops it by its PID (SIGTERM, then SIGKILL). Its output
goes to a log file, never to a pipe nobody drains. ``fast=True`` (the default) shortens
raft's heartbeat and election timeout, which also lowers etcd's minimum lease TTL to 1 s,
so leadership tests need not wait out the default 2 s. A missing etcd is an error, never a
skip: the project's setup installs it.

``tls=True`` runs it the way cargohold runs etcd (cargohold/security/etcd.py): https with
client-certificate authentication on both ports, certificates from an etcd CA made in its
temporary directory; ``client_tls`` is then the credentials directory of a manager's etcd
client certificate and ``cluster_ca`` the cluster's CA (whose certificates etcd refuses).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from tests.support.processes import terminate

DEFAULT_BINARY = "/usr/bin/etcd"


def find_etcd(binary: str | None = None) -> str:
    """The etcd binary (``binary``, else $CARGOHOLD_ETCD, else /usr/bin/etcd or etcd on
    PATH), or RuntimeError saying how to get it."""
    wanted = binary or os.environ.get("CARGOHOLD_ETCD")
    candidates = [wanted] if wanted else [DEFAULT_BINARY, shutil.which("etcd")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"etcd not found (looked for {wanted or DEFAULT_BINARY + ' and etcd on PATH'}): "
        "run scripts/setup.sh, which installs Debian's etcd-server"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    def __init__(
        self, name: str = "test", fast: bool = True, binary: str | None = None, tls: bool = False
    ) -> None:
        self.name = name
        self.fast = fast
        self.binary = binary
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.client_port = 0
        self.peer_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def _dir(self, name: str) -> str:
        assert self._tmp is not None
        return os.path.join(self._tmp.name, name)

    @property
    def client_tls(self) -> str:
        """The manager's etcd client credentials directory (``tls=True`` only)."""
        assert self.tls
        return self._dir("client")

    @property
    def cluster_ca(self) -> str:
        """The cluster CA's directory (etcd's CA is its ``etcd`` subdirectory)."""
        assert self.tls
        return self._dir("ca")

    def _make_certificates(self) -> None:
        from cargohold.security import etcd as etcd_tls
        from cargohold.security.ca import CertificateAuthority

        ca = etcd_tls.etcd_ca(CertificateAuthority.create(self.cluster_ca, "c-etcd-test"))
        etcd_tls.issue_member(ca, self.name, ["127.0.0.1", "localhost"]).write(self._dir("member"))
        etcd_tls.issue_client(ca, "test").write(self.client_tls)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> str:
        assert self._tmp is not None
        return os.path.join(self._tmp.name, "etcd.log")

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except (AssertionError, FileNotFoundError):
            return ""

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        binary = find_etcd(self.binary)
        self._tmp = tempfile.TemporaryDirectory(prefix="cargohold-etcd-")
        if self.tls:
            self._make_certificates()
        for attempt in range(3):  # a free port can be taken between our probe and etcd's bind
            self.client_port, self.peer_port = _free_port(), _free_port()
            if self._start_once(binary, timeout):
                return self
            if self.alive():
                break  # running but never answered: retrying will not help
            if attempt < 2 and "address already in use" not in self.output():
                break
        log = self.output()
        self.stop()
        raise RuntimeError(f"etcd did not start within {timeout:.0f}s; its log:\n{log[-4000:]}")

    def _start_once(self, binary: str, timeout: float) -> bool:
        assert self._tmp is not None
        data_dir = os.path.join(self._tmp.name, "data")
        shutil.rmtree(data_dir, ignore_errors=True)
        client = f"{self.scheme}://127.0.0.1:{self.client_port}"
        peer = f"{self.scheme}://127.0.0.1:{self.peer_port}"
        cmd = [
            binary,
            f"--name={self.name}",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.tls:
            from cargohold.security.etcd import server_flags

            cmd += server_flags(self._dir("member"))
        if self.fast:
            cmd += ["--heartbeat-interval=10", "--election-timeout=100"]
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return True
            if not self.alive():
                return False
            time.sleep(0.05)
        return False

    def ready(self) -> bool:
        """Does /v3/kv/range answer (a linearizable read: a leader exists)?"""
        req = urllib.request.Request(
            self.url + "/v3/kv/range", data=json.dumps({"key": "AA=="}).encode(), method="POST"
        )
        context = None
        if self.tls:
            from cargohold.security.tls import Credentials

            context = Credentials.load(self.client_tls).client_context()
        try:
            with urllib.request.urlopen(req, timeout=1.0, context=context) as r:
                return r.status == 200 and "header" in json.load(r)
        except (OSError, ValueError, http.client.HTTPException, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL if it does not end within ``timeout``; then remove its data."""
        terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def etcd_fixture(scope: str = "session", **kwargs: Any) -> Callable[..., Iterator[EtcdProcess]]:
    """A pytest fixture running one etcd for ``scope``: ``etcd = etcd_fixture()`` at module
    level. A missing or failing etcd fails the tests that use it, with the reason."""
    import pytest

    @pytest.fixture(scope=scope)  # type: ignore[misc]
    def etcd() -> Iterator[EtcdProcess]:
        proc = EtcdProcess(**kwargs)
        failure = ""
        try:
            proc.start()
        except RuntimeError as e:
            failure = str(e)
        if failure:
            pytest.fail(failure, pytrace=False)
        try:
            yield proc
        finally:
            proc.stop()

    return etcd
