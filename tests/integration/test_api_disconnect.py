"""A client that goes away mid-request is a normal event for the manager: one debug line,
no traceback, no 500 in its log, and it goes on serving (api_errors.py)."""

from __future__ import annotations

import socket
import time

from tests.support.tls_manager import TlsManager


def _give_up(m: TlsManager, path: str, token: str) -> None:
    """Send a POST's headers and the start of its body, then close the connection."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(m.unix)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: cargohold\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
        )
        s.sendall(head.encode() + b'{"name": "vol-')


def test_a_client_leaving_mid_request_leaves_no_traceback(tmp_path) -> None:
    m = TlsManager(tmp_path, env={"CARGOHOLD_LOG": "DEBUG"})
    m.start()
    try:
        paths = ["/api/v1/volumes", "/api/v1/tenants", "/api/v1/backup-targets"]
        for path in paths:
            _give_up(m, path, m.admin_token)
        deadline = time.monotonic() + 20
        while m.output().count("the client went away") < len(paths):
            assert time.monotonic() < deadline, m.output()[-3000:]
            time.sleep(0.05)
        with m.unix_client(m.admin_token) as c:  # still serving
            assert c.get("/api/v1/volumes").status_code == 200
    finally:
        m.stop()
    log = m.output()
    for path in paths:
        assert f"POST {path}: the client went away" in log
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]
    assert "Exception in ASGI application" not in log
