"""Start and stop real cargohold processes for tests (and benchmarks): no mocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ServerProc:
    disks: list[str]
    host: str = "127.0.0.1"
    port: int = 0
    unix: str | None = None
    workers: int = 1
    proc: subprocess.Popen | None = None
    log_path: str = ""
    log_dir: str | None = None  # default: next to the first disk (not on it: it may be full)
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS) to run it on a lab node

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
        env = dict(
            os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG=os.environ.get("CARGOHOLD_LOG", "WARNING")
        )
        # output goes to a file, never a pipe nobody drains (a full pipe would block the server)
        log_dir = self.log_dir or os.path.dirname(os.path.abspath(self.disks[0]))
        self.log_path = os.path.join(log_dir, f"replica-server-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            m = re.search(r"listening on [^ ]+:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("replica server did not start:\n" + self.output())

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

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
