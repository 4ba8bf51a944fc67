"""The engine's control client for tests and benchmarks: one request over the engine's unix
control socket (newline-delimited JSON), one reply (``control_request``, shared with
``cargohold bench``), and the status of an engine that may still be starting."""

from __future__ import annotations

import time
from typing import Any

from cargohold.cli.bench_systems import control_request

__all__ = ["control_request", "engine_status"]


def engine_status(path: str, timeout: float = 10.0, io_timeout: float = 30.0) -> Any:
    """The engine's status; retries a socket that is not there yet for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return control_request(path, {"op": "status"}, io_timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
