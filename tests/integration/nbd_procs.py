"""Start and stop ``cargohold nbd-serve`` as a real process for interop tests: no mocks.

Output goes to a log file (never a pipe nobody drains); the listening port is parsed from
the log. ``stop`` sends SIGTERM and checks the clean exit (drain, flush, close)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class NBDProc:
    directory: str
    size: str = "64MiB"
    unix: str | None = None
    name: str = ""
    read_only: bool = False
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: str = ""

    def start(self, timeout: float = 20.0) -> NBDProc:
        cmd = [sys.executable, "-m", "cargohold", "nbd-serve", "--dir", self.directory]
        cmd += ["--size", self.size, "--listen", f"127.0.0.1:{self.port}", "--name", self.name]
        if self.unix:
            cmd += ["--unix", self.unix]
        if self.read_only:
            cmd.append("--read-only")
        env = dict(
            os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG=os.environ.get("CARGOHOLD_LOG", "WARNING")
        )
        parent = os.path.dirname(os.path.abspath(self.directory))
        self.log_path = os.path.join(parent, f"nbd-serve-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on [^ ]+:(\d+)", self.output())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("nbd-serve did not start:\n" + self.output())

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.name}"

    @property
    def unix_uri(self) -> str:
        assert self.unix
        return f"nbd+unix:///{self.name}?socket={self.unix}"

    def output(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        return rc

    def stop(self) -> int | None:
        """SIGTERM: the server drains, flushes, closes the replica and exits 0."""
        return self.kill(signal.SIGTERM)
