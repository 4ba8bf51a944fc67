"""The engine's control client for tests and benchmarks: one request over the engine's unix
control socket (newline-delimited JSON), one reply."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


def control_request(path: str, request: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send ``request`` to the engine's control socket at ``path``; the decoded reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


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
