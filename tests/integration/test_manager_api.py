"""The manager's API as a real process (``cargohold manager`` over HTTPS on a loopback port,
a fresh SQLite state store, real certificates: tls_manager.py), driven over real sockets:

- schemathesis, a property-based tester, generates requests from the published OpenAPI
  schema (valid and invalid ones, wrong methods, wrong content types) and checks that
  every answer's status is declared, its body fits the schema, no 5xx but the documented
  507 comes out, invalid data is refused and valid data taken (tests/integration/
  schemathesis.toml says what differs from its defaults, and why);
- 20 concurrent creates of one name: exactly one 201, the others 409;
- a damaged SQLite page and a record that is not valid JSON: 503 naming the file or the
  record, /healthz failing (503) while /livez answers, and recovery once repaired.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.tls_manager import ROOT, TlsManager

GiB = 1 << 30
ST_TIMEOUT = 120.0  # hard bound on the schemathesis run (it takes ~15 s here)


class Manager(TlsManager):
    """One ``cargohold manager`` process of ours over HTTPS (tls_manager.py), and an admin
    client for it (``http``: a certificate of role admin)."""

    def __init__(self, dir: Path) -> None:
        super().__init__(dir)
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()  # tests call ``http`` from many threads

    def start(self, init: bool = False, timeout: float = 30.0) -> bool:  # type: ignore[override]
        """True once it answers; False if it exited first (its log says why)."""
        try:
            super().start(init=init, timeout=timeout)
        except AssertionError:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            raise
        return True

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            return self._admin()

    def _admin(self) -> httpx.Client:
        if self._http is None or str(self._http.base_url).rstrip("/") != self.url:
            self._http = self.client("admin", "test", timeout=30)
        return self._http


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path)
    assert m.start(init=True), m.output()
    yield m
    m.stop()


def _register_nodes(manager: Manager, n: int = 3) -> None:
    for i in range(1, n + 1):
        reg = {
            "address": "127.0.0.1",
            "replica_port": 9500 + i,
            "disks": [{"name": "disk-0", "path": f"/d{i}", "capacity_bytes": 100 * GiB}],
        }
        with manager.client("agent", f"node-{i}") as agent:  # only a node's agent registers it
            r = agent.put(f"/api/v1/nodes/node-{i}", json=reg)
        assert r.status_code == 200, r.text


def _error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


def _eventually(fn: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_the_api_matches_its_schema_under_schemathesis(manager: Manager, tmp_path: Path) -> None:
    _register_nodes(manager)  # so that creates can succeed, not only fail
    st = shutil.which("st", path=os.path.dirname(sys.executable))
    assert st is not None, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    cmd = [
        st,
        "--config-file",
        str(ROOT / "tests/integration/schemathesis.toml"),
        "run",
        f"{manager.url}/openapi.json",
        "--checks",
        "all",
        # DELETE answers 202 and the volume stays readable ("deleting") until its replicas
        # are gone; a 404 for a node named in a request body is about the node.
        # ignored_auth drops the Authorization header and expects 401, but this run
        # authenticates by client certificate, which it cannot drop (test_api_auth.py
        # checks every operation without a credential).
        "--exclude-checks",
        "use_after_free,ensure_resource_availability,ignored_auth",
        "--max-examples",
        "15",
        "--workers",
        "1",  # CPython 3.11's ast module is not thread-safe (hypothesis describes lambdas)
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        # over HTTPS as an admin (a certificate of the cluster's CA): heartbeats and
        # registrations answer 403 to it (only a node's agent may), which is declared
        "--tls-verify",
        str(manager.dir / "ca" / "trust.crt"),
        "--request-cert",
        str(manager.creds("admin", "test") / "tls.crt"),
        "--request-cert-key",
        str(manager.creds("admin", "test") / "tls.key"),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.integration.st_hooks",
    }
    # bounded: 15 examples per operation (~25 s here), and the run is killed past ST_TIMEOUT
    run = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=ST_TIMEOUT
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    assert " passed" in out and "failures" not in out.split("SUMMARY")[-1], out[-5000:]
    # the manager is still healthy after all of it
    assert manager.http.get("/healthz", timeout=5).status_code == 200
    assert manager.proc is not None and manager.proc.poll() is None


def test_twenty_concurrent_creates_of_one_name(manager: Manager) -> None:
    _register_nodes(manager)
    body = {"name": "data", "size_bytes": GiB}

    def create(i: int) -> httpx.Response:
        # spread over ~40 ms: some requests check the name before the winner stores its
        # volume and place replicas after (the race that answered 507)
        time.sleep(i * 0.002)
        return manager.http.post("/api/v1/volumes", json=body, timeout=30)

    for attempt in range(5):  # a few rounds: each one a race of 20 on a new name
        body["name"] = f"data-{attempt}"
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            rs = list(pool.map(create, range(20)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [201] + [409] * 19, [r.text for r in rs if r.status_code != 409]
        for r in rs:
            if r.status_code == 409:
                assert r.json()["error"]["type"] == "AlreadyExists", r.text
        v = manager.http.get(f"/api/v1/volumes/{body['name']}", timeout=10).json()
        assert len(v["replicas"]) == 3 and len({x["node"] for x in v["replicas"]}) == 3


def _kv_pages(db: Path) -> tuple[int, list[int]]:
    """The page size and the root pages of the records' table and its key index."""
    c = sqlite3.connect(db)
    try:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = int(c.execute("PRAGMA page_size").fetchone()[0])
        roots = [
            int(r[0])
            for r in c.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'kv' AND rootpage > 1"
            )
        ]
    finally:
        c.close()
    return size, roots


def test_a_damaged_sqlite_page_is_503_and_health_fails_until_restored(
    manager: Manager, tmp_path: Path
) -> None:
    _register_nodes(manager)
    r = manager.http.post("/api/v1/volumes", json={"name": "data", "size_bytes": GiB})
    assert r.status_code == 201, r.text
    manager.stop()
    size, roots = _kv_pages(manager.db)
    assert roots, "no pages found for the kv table"
    good = manager.db.read_bytes()
    damaged = bytearray(good)
    for page in roots:  # the records' pages: garbage, as a bad disk sector would leave
        damaged[(page - 1) * size : page * size] = b"\xa5" * size
    manager.db.write_bytes(bytes(damaged))

    if manager.start():
        for path in ("/api/v1/volumes", "/api/v1/volumes/data", "/api/v1/status"):
            msg = _error(manager.http.get(path, timeout=10), 503, "StateStoreDamaged")
            assert str(manager.db) in msg and "damaged" in msg, msg
        h = _eventually(
            lambda: (r := manager.http.get("/healthz", timeout=10)).status_code == 503 and r
        )
        assert h, "the health check did not fail on a damaged state store"
        assert str(manager.db) in _error(h, 503, "StateStoreDamaged")
        assert manager.http.get("/livez", timeout=10).status_code == 200
        assert manager.proc is not None and manager.proc.poll() is None  # still serving
        manager.stop()
    else:  # a manager that refuses to start on a broken store must say which file
        assert str(manager.db) in manager.output(), manager.output()

    manager.db.write_bytes(good)  # restored from the backup
    for extra in ("-wal", "-shm"):
        Path(f"{manager.db}{extra}").unlink(missing_ok=True)
    assert manager.start(), manager.output()
    assert manager.http.get("/healthz", timeout=10).status_code == 200
    v = manager.http.get("/api/v1/volumes/data", timeout=10)
    assert v.status_code == 200 and v.json()["size_bytes"] == GiB


def _write_record(db: Path, key: str, value: bytes) -> None:
    """A write as another writer of the file would make it (a new revision)."""
    c = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE revision SET revision = revision + 1 WHERE id = 0")
        rev = c.execute("SELECT revision FROM revision WHERE id = 0").fetchone()[0]
        c.execute("UPDATE kv SET value = ?, mod_revision = ? WHERE key = ?", (value, rev, key))
        c.execute("COMMIT")
    finally:
        c.close()


def _read_record(db: Path, key: str) -> bytes:
    c = sqlite3.connect(db, timeout=10)
    try:
        return bytes(c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()[0])
    finally:
        c.close()


def test_a_record_with_bad_json_is_503_and_health_fails_until_fixed(manager: Manager) -> None:
    _register_nodes(manager)
    r = manager.http.post("/api/v1/volumes", json={"name": "data", "size_bytes": GiB})
    assert r.status_code == 201, r.text
    assert manager.http.get("/healthz", timeout=10).status_code == 200
    good = _read_record(manager.db, "/volumes/data")
    _write_record(manager.db, "/volumes/data", b'{"name": "data", "size_bytes": 10737')

    msg = _error(manager.http.get("/api/v1/volumes/data", timeout=10), 503, "StateStoreDamaged")
    assert "/volumes/data" in msg, msg
    _error(manager.http.get("/api/v1/volumes", timeout=10), 503, "StateStoreDamaged")
    h = manager.http.get("/healthz", timeout=10)
    assert "/volumes/data" in _error(h, 503, "StateStoreDamaged")
    assert manager.http.get("/livez", timeout=10).status_code == 200

    _write_record(manager.db, "/volumes/data", good)  # repaired
    assert _eventually(lambda: manager.http.get("/healthz", timeout=10).status_code == 200), (
        "the health check did not recover"
    )
    assert manager.http.get("/api/v1/volumes/data", timeout=10).status_code == 200
    assert manager.proc is not None and manager.proc.poll() is None
