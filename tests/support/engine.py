"""Run ``cargohold engine`` as a real process for tests and benchmarks; its control socket
through ``engine_control``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.support.engine_control import control_request
from tests.support.processes import Launched


@dataclass
class EngineProc(Launched):
    volume: str
    replicas: list[str]
    epoch: int
    workdir: str
    local: str | None = None
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: str = ""
    tls_dir: str | None = None  # the engine's credentials (tests/support/tls.py); None: --plaintext
    pass_fds: tuple[int, ...] = ()  # descriptors the engine inherits (e.g. --data-key-fd)

    @property
    def control(self) -> str:
        return os.path.join(self.workdir, f"{self.volume}-e{self.epoch}.ctl")

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.volume}"

    def start(self, timeout: float = 30.0) -> EngineProc:
        cmd = [
            sys.executable,
            "-m",
            "cargohold",
            "engine",
            "--volume",
            self.volume,
            "--epoch",
            str(self.epoch),
            "--listen",
            "127.0.0.1:0",
            "--control",
            self.control,
        ]
        for r in self.replicas:
            cmd += ["--replica", r]
        if self.local:
            cmd += ["--local", self.local]
        cmd += self.extra
        if "--tls-dir" not in self.extra and "--plaintext" not in self.extra:
            cmd += ["--tls-dir", self.tls_dir] if self.tls_dir else ["--plaintext"]
        log = os.path.join(self.workdir, f"engine-{time.monotonic_ns()}.log")
        self.port = self._launch(
            cmd,
            log,
            r"nbd server listening on 127\.0\.0\.1:(\d+)",
            timeout,
            "engine",
            "INFO",
            pass_fds=self.pass_fds,
        )
        return self

    def ctl(self, **request: object) -> dict:
        return control_request(self.control, request)  # type: ignore[no-any-return]

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "") -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        status = self.ctl(op="status")
        while not predicate(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {status}")
            time.sleep(0.1)
            status = self.ctl(op="status")
        return status

    def modes(self) -> dict[str, str]:
        return {r["id"]: r["mode"] for r in self.ctl(op="status")["replicas"]}
