"""The node DaemonSet's init container (csi/node_zone.py) reads the node's zone label
from the API server with the service account's token and writes it for the agent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from cargohold.csi import node_zone

NODES = {
    "zoned": {"topology.kubernetes.io/zone": "eu-1a", "kubernetes.io/hostname": "zoned"},
    "legacy": {"failure-domain.beta.kubernetes.io/zone": "old-b"},
    "plain": {"kubernetes.io/hostname": "plain"},
}


class API(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        API.seen.append((self.path, self.headers.get("Authorization", "")))
        name = self.path.rsplit("/", 1)[-1]
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(403)
            self.end_headers()
            return
        if name not in NODES:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"kind": "Node", "metadata": {"name": name, "labels": NODES[name]}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Any:
    srv = HTTPServer(("127.0.0.1", 0), API)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    yield f"http://127.0.0.1:{srv.server_address[1]}", str(token)
    srv.shutdown()


@pytest.mark.parametrize(("node", "zone"), [("zoned", "eu-1a"), ("legacy", "old-b"), ("plain", "")])
def test_writes_the_zone_label(api: Any, tmp_path: Path, node: str, zone: str) -> None:
    url, token = api
    out = tmp_path / "run" / "zone"
    args = ["--node", node, "--out", str(out), "--api-server", url, "--token-file", token]
    assert node_zone.main(args) == 0
    assert out.read_text() == zone
    assert API.seen[-1] == (f"/api/v1/nodes/{node}", "Bearer s3cret")


def test_fails_clearly_without_rights_or_node(api: Any, tmp_path: Path, capsys: Any) -> None:
    url, _ = api
    out = tmp_path / "zone"
    args = ["--node", "zoned", "--out", str(out), "--api-server", url,
            "--token-file", str(tmp_path / "none")]  # fmt: skip
    assert node_zone.main(args) == 1
    assert "needs `get` on nodes" in capsys.readouterr().err and not out.exists()


def test_outside_a_cluster_it_says_so(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert node_zone.main(["--node", "x", "--out", str(tmp_path / "z")]) == 2
    assert "--api-server" in capsys.readouterr().err
