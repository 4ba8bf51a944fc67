"""Start and stop ``cargohold nbd-serve`` as a real process for interop tests: no mocks.

Output goes to a log file (never a pipe nobody drains); the listening port is parsed from
the log. ``stop`` sends SIGTERM and checks the clean exit (drain, flush, close)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.support.processes import Launched


@dataclass
class NBDProc(Launched):
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
        parent = os.path.dirname(os.path.abspath(self.directory))
        log = os.path.join(parent, f"nbd-serve-{time.monotonic_ns()}.log")
        self.port = self._launch(cmd, log, r"listening on [^ ]+:(\d+)", timeout, "nbd-serve")
        return self

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.name}"

    @property
    def unix_uri(self) -> str:
        assert self.unix
        return f"nbd+unix:///{self.name}?socket={self.unix}"
