"""A stand-in for the manager, for node-agent tests: it records what agents register and
report, and answers heartbeats with scripted assignments (raw JSON, so a test can slip a bad
entry in). A heartbeat that says ``same_report`` is recorded as the whole report it stands
for, as the manager takes it. A stdlib HTTP server on a thread, one connection per request (HTTP/1.0), so
``stop()`` really makes it unreachable; ``start()`` again listens on the same port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON = dict[str, Any]


class FakeManager:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.port = 0
        self.registrations: list[tuple[str, JSON]] = []
        self.heartbeats: list[tuple[str, JSON]] = []
        self.known: set[str] = set()  # registered nodes; a heartbeat from another gets 404
        self.assignments: dict[str, JSON] = {}  # node -> the heartbeat's answer
        self.reports: dict[str, JSON] = {}  # node -> its last whole report (same_report)
        self.refuse: tuple[int, str] | None = None  # answer heartbeats with this error
        self.refused = 0  # heartbeats answered so
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- serving ------------------------------------------------------------------------
    def start(self, forget: bool = False) -> FakeManager:
        """Listen (again, on the same port). ``forget``: lose the registered nodes, like a
        manager whose state was reset."""
        with self.lock:
            self.reports.clear()  # a manager keeps reports in memory: a restart loses them
            if forget:
                self.known.clear()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:3] != ["api", "v1", "nodes"] or len(parts) != 4:
                    return self._send(404, {"error": {"type": "NotFound", "message": self.path}})
                body = self._body()
                with fake.lock:
                    fake.registrations.append((parts[3], body))
                    fake.known.add(parts[3])
                self._send(200, {"name": parts[3], **body})

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[:3] != ["api", "v1", "nodes"] or parts[4:] != ["heartbeat"]:
                    return self._send(404, {"error": {"type": "NotFound", "message": self.path}})
                node, body = parts[3], self._body()
                with fake.lock:
                    if fake.refuse is not None:
                        status, etype = fake.refuse
                        fake.refused += 1
                        err = {"type": etype, "message": f"refused ({etype})"}
                        return self._send(status, {"error": err})
                    if node not in fake.known:
                        msg = f"no node {node}"
                        return self._send(404, {"error": {"type": "NotFound", "message": msg}})
                    if body.get("same_report"):  # "as last time": what it said then
                        last = fake.reports.get(node)
                        if last is None or last.get("report_digest") != body.get("report_digest"):
                            return self._send(200, {"heartbeat_interval": 0.2, "resend": True})
                        body = {**last, "hold": body.get("hold", 0)}
                    elif body.get("report_digest"):
                        fake.reports[node] = body
                    fake.heartbeats.append((node, body))
                    answer = fake.assignments.get(node, {})
                self._send(200, {"heartbeat_interval": 0.2, **answer})

            def _body(self) -> JSON:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def _send(self, status: int, body: JSON) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- scripting and looking ------------------------------------------------------------
    def assign(self, node: str, **parts: Any) -> None:
        """Set the answer to the node's heartbeats: replicas=[...], engines=[...], operations."""
        with self.lock:
            self.assignments[node] = {
                "replicas": [],
                "engines": [],
                "operations": [],
                **self.assignments.get(node, {}),
                **parts,
            }

    def beats(self, node: str) -> int:
        with self.lock:
            return sum(1 for n, _ in self.heartbeats if n == node)

    def last(self, node: str) -> JSON | None:
        with self.lock:
            for n, body in reversed(self.heartbeats):
                if n == node:
                    return body
        return None

    def wait_heartbeat(
        self, node: str, predicate: Callable[[JSON], Any], timeout: float = 30.0, what: str = ""
    ) -> JSON:
        """The first heartbeat from now on (newest first) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            seen = len(self.heartbeats)
        while time.monotonic() < deadline:
            with self.lock:
                fresh = [b for n, b in self.heartbeats[seen:] if n == node]
                seen = len(self.heartbeats)
            for body in reversed(fresh):
                if predicate(body):
                    return body
            time.sleep(0.05)
        raise AssertionError(
            f"no heartbeat of {node} showed {what} in {timeout} s: {self.last(node)}"
        )


def engine_of(hb: JSON, volume: str) -> JSON | None:
    return next((e for e in hb.get("engines", []) if e["volume"] == volume), None)


def operation_of(hb: JSON, oid: str) -> JSON | None:
    return next((o for o in hb.get("operations", []) if o["id"] == oid), None)
