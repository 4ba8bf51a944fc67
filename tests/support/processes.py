"""Start and stop real cargohold processes for tests (and benchmarks): no mocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """End a server a test started (by its PID): SIGTERM, SIGKILL if it is still there after
    ``grace`` seconds (SeaweedFS ignores SIGTERM), then reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Launched:
    """A process of ours: output in a log file (never a pipe nobody drains: a full pipe
    would block it), its port parsed from that log, stopped by its PID."""

    proc: subprocess.Popen | None = None
    log_path: str = ""

    def _launch(
        self,
        cmd: list[str],
        log_path: str,
        pattern: str,
        timeout: float,
        what: str,
        log_level: str = "WARNING",
        pass_fds: tuple[int, ...] = (),
    ) -> int:
        env = dict(
            os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG=os.environ.get("CARGOHOLD_LOG", log_level)
        )
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{what} did not start:\n" + self.output())

    def output(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                rc = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        return rc

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM: a clean shutdown (reaped; SIGKILL if it does not end in time)."""
        return self.kill(sig)


@dataclass
class ServerProc(Launched):
    disks: list[str]
    host: str = "127.0.0.1"
    port: int = 0
    unix: str | None = None
    workers: int = 1
    proc: subprocess.Popen | None = None
    log_path: str = ""
    log_dir: str | None = None  # default: next to the first disk (not on it: it may be full)
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS) to run it on a lab node
    tls_dir: str | None = None  # its credentials (tests/support/tls.py); None: --plaintext

    def start(self, timeout: float = 20.0) -> ServerProc:
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "cargohold",
            "replica-server",
            "--listen",
            f"{self.host}:{self.port}",
            "--workers",
            str(self.workers),
        ]
        for d in self.disks:
            cmd += ["--disk", d]
        if self.unix:
            cmd += ["--unix", self.unix]
        cmd += ["--tls-dir", self.tls_dir] if self.tls_dir else ["--plaintext"]
        log_dir = self.log_dir or os.path.dirname(os.path.abspath(self.disks[0]))
        log = os.path.join(log_dir, f"replica-server-{time.monotonic_ns()}.log")
        self.port = self._launch(cmd, log, r"listening on [^ ]+:(\d+)", timeout, "replica server")
        return self


async def replica_server_in_process(path):  # type: ignore[no-untyped-def]
    """A replica server on loopback in this process and event loop, its one disk at
    ``path`` (made here): for tests that race many requests against it."""
    from cargohold.replica.server import ReplicaServer
    from cargohold.settings import ReplicaServerSettings

    path.mkdir()
    s = ReplicaServer(
        ReplicaServerSettings(host="127.0.0.1", port=0, disks=[str(path)], plaintext=True)
    )
    await s.start()
    return s


def rot(path: str, blocks: list[int]) -> None:
    """Bit rot: flip 16 bytes in the middle of each block's data in a layer's data file
    (block b at 4096 + b * 4096), durably."""
    fd = os.open(path, os.O_RDWR)
    try:
        for b in blocks:
            off = 4096 + b * 4096 + 1000
            os.pwrite(fd, bytes(x ^ 0xFF for x in os.pread(fd, 16, off)), off)
        os.fsync(fd)
    finally:
        os.close(fd)
