"""Start and stop real cargohold processes for tests (and benchmarks): no mocks."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ServerProc:
    disks: list[str]
    host: str = "127.0.0.1"
    port: int = 0
    unix: str | None = None
    workers: int = 1
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    def start(self, timeout: float = 20.0) -> ServerProc:
        cmd = [sys.executable, "-m", "cargohold", "replica-server",
               "--listen", f"{self.host}:{self.port}", "--workers", str(self.workers)]
        for d in self.disks:
            cmd += ["--disk", d]
        if self.unix:
            cmd += ["--unix", self.unix]
        env = dict(os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG=os.environ.get("CARGOHOLD_LOG", "WARNING"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, text=True, bufsize=1)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.log.append(line)
                m = re.search(r"listening on [^ ]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    return self
            if self.proc.poll() is not None:
                break
        self.kill()
        raise RuntimeError("replica server did not start:\n" + "".join(self.log))

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
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
