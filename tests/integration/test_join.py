"""Joining the cluster, certificates and disks, with real processes: a manager serving
HTTPS with the cluster CA (``--tls-dir``, ``--ca-dir``) and agents that join with a join
token (``--join-token-file``) and then talk mutual TLS. The attacks of issue #16 on the
node and disk routes must fail here: an agent without a token or certificate (evil-node)
never registers, a disk at /etc is refused and nothing is created, an engine certificate
for a volume not assigned to the node is refused, a removed node's certificate no longer
opens the manager."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from cargohold.security.ca import CertificateAuthority, make_csr, new_key
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials, cert_identity
from tests.support.processes import ROOT

GiB = 1 << 30


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = dict(os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG="INFO", **self.env)
        with open(self.log, "ab") as f:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "cargohold", *self.argv],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)  # its own session: the agent's children too
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


@dataclass
class Cluster:
    tmp: Path
    url: str
    ca: CertificateAuthority
    manager: Proc
    procs: list[Proc]

    def creds(self, ident: Identity, name: str) -> Credentials:
        d = self.tmp / "creds" / name
        self.ca.issue(ident).write(d)
        return Credentials.load(d)

    def client(self, creds: Credentials | None = None, trust: Path | None = None) -> httpx.Client:
        ctx = (
            creds.client_context() if creds else _trust_only(trust or self.tmp / "ca" / "trust.crt")
        )
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10)

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.creds(Identity(self.ca.cluster, Role.ADMIN, "root"), "admin"))

    def join_file(self, ttl: int = 600, uses: int = 1) -> Path:
        with self.admin as c:
            r = c.post("/api/v1/join-tokens", json={"ttl_seconds": ttl, "uses": uses})
        assert r.status_code == 201, r.text
        tok = r.json()
        path = self.tmp / f"join-{tok['id']}"
        path.write_text(f"{tok['token']}\n{tok['trust']}")
        return path

    def agent(self, node: str, join: Path | None, **env: str) -> Proc:
        d = self.tmp / node
        d.mkdir(exist_ok=True)
        argv = ["agent", "--node", node, "--api", self.url, "--address", "127.0.0.1"]
        argv += ["--dir", str(d), "--heartbeat", "0.5"]
        if join is not None:
            argv += ["--join-token-file", str(join)]
        p = Proc(argv, self.tmp / f"{node}.log", env).start()
        self.procs.append(p)
        return p

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self.admin as c:
            return {n["name"]: n for n in c.get("/api/v1/nodes").json()}

    def up(self, node: str) -> bool:
        n = self.nodes().get(node)
        return n is not None and n["state"] == "up"


def _trust_only(trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(trust))
    return ctx


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cid = f"c-{secrets.token_hex(16)}"
    ca = CertificateAuthority.create(tmp_path / "ca", cid)
    ca.issue(Identity(cid, Role.MANAGER, "m1"), hosts=["127.0.0.1"]).write(tmp_path / "mgr-tls")
    port = free_port()
    argv = ["manager", "--state", f"sqlite:{tmp_path / 'state.db'}", "--listen"]
    argv += [f"127.0.0.1:{port}", "--init", "--cluster-id", cid, "--id", "m1"]
    argv += ["--ca-dir", str(tmp_path / "ca"), "--tls-dir", str(tmp_path / "mgr-tls")]
    env = {
        "CARGOHOLD_MANAGER_DISK_ROOTS": str(tmp_path / "roots"),
        "CARGOHOLD_MANAGER_NODE_DOWN_AFTER": "3",
        "CARGOHOLD_MANAGER_CERTIFICATE_LIFETIME": os.environ.get("T_CERT_LIFE", "86400"),
    }
    mgr = Proc(argv, tmp_path / "manager.log", env).start()
    c = Cluster(tmp_path, f"https://127.0.0.1:{port}", ca, mgr, [])

    def answers() -> bool:
        try:
            with c.client() as cl:
                return cl.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, "the manager to answer over HTTPS")
        yield c
    finally:
        for p in reversed(c.procs):
            p.stop()
        mgr.stop()


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_an_agent_joins_with_a_token_then_talks_mutual_tls(cluster: Cluster) -> None:
    agent = cluster.agent("node-1", cluster.join_file())
    wait_for(lambda: cluster.up("node-1"), "node-1 to register", 60)
    tls = cluster.tmp / "node-1" / "tls"
    assert cert_identity((tls / "agent" / "tls.crt").read_bytes()) == Identity(
        cluster.ca.cluster, Role.AGENT, "node-1"
    )
    assert cert_identity((tls / "replica-server" / "tls.crt").read_bytes()) == Identity(
        cluster.ca.cluster, Role.REPLICA, "node-1"
    )
    assert (tls / "agent" / "tls.key").stat().st_mode & 0o077 == 0  # the key is the node's
    assert (tls / "agent" / "ca.crt").read_bytes() == cluster.ca.trust_pem()
    # registering needs agent/node-1: it used its certificate (no certificate is 401)
    with cluster.client() as anon:
        r = anon.put("/api/v1/nodes/node-1", json={"address": "10.6.6.6"})
    assert r.status_code == 401, r.text
    assert cluster.nodes()["node-1"]["address"] == "127.0.0.1"
    # heartbeats go on over mTLS
    seen = cluster.nodes()["node-1"]["heartbeat_at"]
    wait_for(lambda: cluster.nodes()["node-1"]["heartbeat_at"] > seen, "another heartbeat")
    assert "joined cluster" in agent.output()


def test_a_joined_agent_is_verified_by_its_address(cluster: Cluster) -> None:
    """The certificates issued at join name the node's address (subjectAltName IP), so a
    scraper that checks hostnames, as Prometheus does, verifies the agent's /metrics."""
    port = free_port()
    cluster.agent("node-1", cluster.join_file(), CARGOHOLD_AGENT_METRICS_PORT=str(port))
    wait_for(lambda: cluster.up("node-1"), "node-1 to register", 60)
    tls = cluster.tmp / "node-1" / "tls"
    for d in ("agent", "replica-server"):
        cert = x509.load_pem_x509_certificate((tls / d / "tls.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    reader = cluster.tmp / "creds" / "prometheus"
    cluster.ca.issue(Identity(cluster.ca.cluster, Role.READER, "prometheus")).write(reader)
    ctx = ssl.create_default_context(cafile=str(cluster.tmp / "ca" / "trust.crt"))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    ctx.load_cert_chain(reader / "tls.crt", reader / "tls.key")

    def scrape() -> str:
        try:
            with httpx.Client(verify=ctx, timeout=5) as c:
                r = c.get(f"https://127.0.0.1:{port}/metrics")
        except httpx.ConnectError as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise  # a name or chain the scraper refuses: what this test is about
            return ""
        return r.text if r.status_code == 200 else ""

    assert "cargohold_" in wait_for(scrape, "the agent's /metrics over verified HTTPS")
    # the same scraper refuses a name the certificate does not carry
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            ctx.wrap_socket(raw, server_hostname="node-9.example")


def test_join_without_a_token_or_with_a_used_or_expired_one_is_refused(cluster: Cluster) -> None:
    used = cluster.join_file()
    cluster.agent("node-1", used)
    wait_for(lambda: cluster.up("node-1"), "node-1 to register", 60)
    again = cluster.agent("node-2", used)  # the one use is gone
    assert again.p is not None and again.p.wait(60) != 0
    assert "unknown join token" in again.output()
    expired = cluster.join_file(ttl=1)
    time.sleep(1.5)
    late = cluster.agent("node-3", expired)
    assert late.p is not None and late.p.wait(60) != 0
    assert "expired" in late.output()
    bad = cluster.tmp / "bad.join"
    bad.write_text("chk_000000000000_" + "A" * 43 + "\n" + cluster.ca.trust_pem().decode())
    forged = cluster.agent("node-4", bad)
    assert forged.p is not None and forged.p.wait(60) != 0
    for n in ("node-2", "node-3", "node-4"):
        assert not (cluster.tmp / n / "tls" / "agent" / "tls.crt").exists()
    assert set(cluster.nodes()) == {"node-1"}


def test_evil_node_cannot_register(cluster: Cluster) -> None:
    # an agent with neither a join token nor a certificate: its registration is refused
    evil = cluster.agent("evil-node", None)
    wait_for(lambda: "cannot register" in evil.output(), "evil-node to be refused", 60)
    assert "evil-node" not in cluster.nodes()
    reg = {"address": "10.6.6.6", "disks": [{"name": "d", "path": "/tmp/x", "capacity_bytes": GiB}]}
    with cluster.client() as anon:
        assert anon.put("/api/v1/nodes/evil-node", json=reg).status_code == 401
    # a certificate of another CA does not get through the handshake
    other = CertificateAuthority.create(cluster.tmp / "other-ca", cluster.ca.cluster)
    other.issue(Identity(cluster.ca.cluster, Role.AGENT, "evil-node")).write(cluster.tmp / "o")
    ctx = Credentials.load(cluster.tmp / "o").client_context()
    ctx.load_verify_locations(cafile=str(cluster.tmp / "ca" / "trust.crt"))
    with pytest.raises(httpx.HTTPError), httpx.Client(base_url=cluster.url, verify=ctx) as c:
        c.put("/api/v1/nodes/evil-node", json=reg)
    # the cluster's admin, or another node's agent, may not speak for evil-node
    with cluster.admin as c:
        assert c.put("/api/v1/nodes/evil-node", json=reg).status_code == 403
    node1 = cluster.creds(Identity(cluster.ca.cluster, Role.AGENT, "node-1"), "n1")
    with cluster.client(node1) as c:
        assert c.put("/api/v1/nodes/evil-node", json=reg).status_code == 403
        assert c.put("/api/v1/nodes/node-1", json={"address": "127.0.0.1"}).status_code == 200
    assert "evil-node" not in cluster.nodes()
    assert evil.p is not None and evil.p.poll() is None  # refused, and the manager goes on


def test_disks_outside_the_allowed_roots_are_refused(cluster: Cluster) -> None:
    cluster.agent("node-1", cluster.join_file())
    wait_for(lambda: cluster.up("node-1"), "node-1 to register", 60)
    roots = cluster.tmp / "roots"
    roots.mkdir()
    (roots / "to-etc").symlink_to("/etc")
    etc_before = sorted(os.listdir("/etc"))
    with cluster.admin as c:
        for path in ("/etc", "/proc", str(roots / "to-etc"), "/var/lib/cargohold/../../etc"):
            body = {"name": "bad", "path": path, "capacity_bytes": GiB}
            r = c.post("/api/v1/nodes/node-1/disks", json=body)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["type"] == "InvalidArgument"
        assert [d["name"] for d in c.get("/api/v1/disks").json()] == ["disk-0"]
        # under the roots: taken. The agent checks again with its own roots (the node's
        # directory and /var/lib/cargohold): this one is outside them, so it creates nothing
        body = {"name": "spare", "path": str(roots / "spare"), "capacity_bytes": GiB}
        assert c.post("/api/v1/nodes/node-1/disks", json=body).status_code == 201
    wait_for(
        lambda: "refusing disk spare" in (cluster.tmp / "node-1.log").read_text(),
        "the agent to refuse the disk",
    )
    assert not (roots / "spare").exists()
    assert sorted(os.listdir("/etc")) == etc_before


def test_disk_remove_is_refused_while_in_use_and_allowed_after_drain(cluster: Cluster) -> None:
    for n in ("node-1", "node-2"):
        cluster.agent(n, cluster.join_file())
    wait_for(lambda: cluster.up("node-1") and cluster.up("node-2"), "both nodes", 60)
    with cluster.admin as c:
        reps: list[dict[str, Any]] = []
        vol = {"name": "data", "size_bytes": 16 << 20, "replicas": 1, "preferred_nodes": ["node-1"]}
        assert c.post("/api/v1/volumes", json=vol).status_code in (200, 201, 202)

        def placed() -> bool:
            reps[:] = c.get("/api/v1/volumes/data").json()["replicas"]
            return len(reps) == 1 and reps[0]["state"] not in ("pending", "failed")

        wait_for(placed, "the replica on disk", 60)
        node, disk = reps[0]["node"], reps[0]["disk"]
        r = c.delete(f"/api/v1/nodes/{node}/disks/{disk}")
        assert r.status_code == 409 and "drain it first" in r.text
        assert c.post(f"/api/v1/nodes/{node}/disks/{disk}/drain").status_code == 200

        def moved() -> bool:
            now = c.get("/api/v1/volumes/data").json()["replicas"]
            return len(now) == 1 and (now[0]["node"], now[0]["disk"]) != (node, disk)

        wait_for(moved, "the replica rebuilt elsewhere", 90)
        r = c.delete(f"/api/v1/nodes/{node}/disks/{disk}")
        assert r.status_code == 200, r.text
        assert (node, disk) not in {(d["node"], d["name"]) for d in c.get("/api/v1/disks").json()}


def test_engine_certificates_only_for_engines_assigned_to_the_node(cluster: Cluster) -> None:
    for n in ("node-1", "node-2"):
        cluster.agent(n, cluster.join_file())
    wait_for(lambda: cluster.up("node-1") and cluster.up("node-2"), "both nodes", 60)
    agent1 = Credentials.load(cluster.tmp / "node-1" / "tls" / "agent")
    agent2 = Credentials.load(cluster.tmp / "node-2" / "tls" / "agent")

    def csr(volume: str) -> str:
        return make_csr(Identity("pending", Role.ENGINE, volume), new_key()).decode()

    with cluster.admin as c:
        vol = {"name": "data", "size_bytes": 16 << 20, "replicas": 1}
        assert c.post("/api/v1/volumes", json=vol).status_code in (200, 201, 202)
        assert c.post("/api/v1/volumes/data/attach", json={"node": "node-1"}).status_code < 300

        def engine_on_node_1() -> bool:
            eng = c.get("/api/v1/volumes/data").json()["engine"]
            return eng is not None and eng["node"] == "node-1"

        wait_for(engine_on_node_1, "the engine assigned to node-1", 60)
        # the agent asked for its engine's certificate when the engine was assigned
        engine_crt = cluster.tmp / "node-1" / "tls" / "engines" / "data" / "tls.crt"
        wait_for(engine_crt.exists, "the agent to get the engine's certificate")
        assert cert_identity(engine_crt.read_bytes()) == Identity(
            cluster.ca.cluster, Role.ENGINE, "data"
        )
        assert not (cluster.tmp / "node-2" / "tls" / "engines").exists()
    path = "/api/v1/nodes/{}/engine-certificates"
    with cluster.client(agent1) as a1:
        r = a1.post(path.format("node-1"), json={"volume": "other", "csr": csr("other")})
        assert r.status_code == 403, r.text
        ok = a1.post(path.format("node-1"), json={"volume": "data", "csr": csr("data")})
        assert ok.status_code == 200, ok.text
        got = cert_identity(ok.json()["cert"].encode())
        assert got == Identity(cluster.ca.cluster, Role.ENGINE, "data")
        # node-1's agent may not ask on node-2's behalf
        r = a1.post(path.format("node-2"), json={"volume": "data", "csr": csr("data")})
        assert r.status_code == 403
    with cluster.client(agent2) as a2:  # the engine of data is not on node-2
        r = a2.post(path.format("node-2"), json={"volume": "data", "csr": csr("data")})
        assert r.status_code == 403, r.text
    # once the engine leaves the node, its key and certificate go too
    with cluster.admin as c:
        assert c.post("/api/v1/volumes/data/detach").status_code < 300
    engine_dir = cluster.tmp / "node-1" / "tls" / "engines" / "data"
    wait_for(lambda: not engine_dir.exists(), "the engine's credentials to be deleted", 60)


def test_a_removed_nodes_certificate_is_refused(cluster: Cluster) -> None:
    for n in ("node-1", "node-2"):
        cluster.agent(n, cluster.join_file())
    wait_for(lambda: cluster.up("node-1") and cluster.up("node-2"), "both nodes", 60)
    agent2 = Credentials.load(cluster.tmp / "node-2" / "tls" / "agent")
    with cluster.client(agent2) as c:
        assert c.get("/api/v1/status").status_code == 200  # it works before
    node2 = cluster.procs[1]
    node2.stop()  # the node is taken out: its agent is gone, its certificate stays on disk
    with cluster.admin as c:
        r = c.delete("/api/v1/nodes/node-2")
        assert r.status_code == 200, r.text
        assert r.json()["revoked_certificates"] >= 2
    assert "node-2" not in cluster.nodes()

    def refused() -> bool:
        try:
            with cluster.client(agent2) as c:
                c.get("/api/v1/status")
            return False
        except httpx.HTTPError:
            return True

    wait_for(refused, "the manager to refuse node-2's revoked certificate", 10)
    # and it gets no new one (renewal needs the node) nor rejoins with it
    csr = make_csr(Identity("pending", Role.AGENT, "node-2"), new_key()).decode()
    with cluster.client(
        cluster.creds(Identity(cluster.ca.cluster, Role.AGENT, "node-2"), "n2")
    ) as c:
        r = c.post("/api/v1/nodes/node-2/certificates", json={"csr": csr, "replica_csr": csr})
        assert r.status_code == 404
    with cluster.client(Credentials.load(cluster.tmp / "node-1" / "tls" / "agent")) as c:
        assert c.get("/api/v1/status").status_code == 200  # others are served on


def test_renewal_replaces_the_certificates_and_the_agent_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_CERT_LIFE", "12")  # renewed after ~6 s, the first expires at 12 s
    gen = cluster.__wrapped__(tmp_path)  # type: ignore[attr-defined]
    c = next(gen)
    try:
        c.agent("node-1", c.join_file())
        wait_for(lambda: c.up("node-1"), "node-1 to register", 60)
        tls = c.tmp / "node-1" / "tls"
        first = _serial(tls / "agent" / "tls.crt"), _serial(tls / "replica-server" / "tls.crt")
        first_end = x509.load_pem_x509_certificate(
            (tls / "agent" / "tls.crt").read_bytes()
        ).not_valid_after_utc.timestamp()
        wait_for(
            lambda: (
                _serial(tls / "agent" / "tls.crt") != first[0]
                and _serial(tls / "replica-server" / "tls.crt") != first[1]
            ),
            "both certificates renewed",
            30,
        )
        wait_for(lambda: time.time() > first_end + 1, "the first certificate to expire", 20)
        seen = c.nodes()["node-1"]["heartbeat_at"]
        wait_for(lambda: c.nodes()["node-1"]["heartbeat_at"] > seen, "heartbeats after expiry")
        assert c.up("node-1")
        assert "certificates renewed" in c.procs[0].output()
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_the_cli_makes_join_files_and_removes_disks_and_nodes(tmp_path: Path) -> None:
    """The commands, against a plaintext manager holding a CA (``--ca-dir`` made at
    ``--init``): join-token create/list/delete, disk add/drain/remove, node remove."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["manager", "--state", f"sqlite:{tmp_path / 'state.db'}", "--listen"]
    argv += [f"127.0.0.1:{port}", "--init", "--ca-dir", str(tmp_path / "ca"), "--plaintext"]
    env = {"CARGOHOLD_MANAGER_DISK_ROOTS": str(tmp_path)}
    mgr = Proc(argv, tmp_path / "manager.log", env).start()
    agent: Proc | None = None
    try:
        wait_for(lambda: _cli("status", "--api", url).returncode == 0, "the manager")
        assert "PLAINTEXT" in mgr.output()  # said loudly
        join = tmp_path / "n1.join"
        out = _cli(
            "node", "join-token", "create", "--ttl", "10m", "--output", str(join), "--api", url
        )
        assert out.returncode == 0, out.stderr
        assert join.stat().st_mode & 0o777 == 0o600
        token, _, trust = join.read_text().partition("\n")
        assert token.startswith("chk_") and "BEGIN CERTIFICATE" in trust
        assert token not in out.stdout + out.stderr  # the file has it, the terminal not
        spare = _cli("node", "join-token", "create", "--api", url)
        assert spare.returncode == 0 and spare.stdout.strip().startswith("chk_")
        listed = _cli("node", "join-token", "list", "-o", "json", "--api", url)
        assert len(json.loads(listed.stdout)) == 2 and "chk_" not in listed.stdout
        spare_id = spare.stdout.strip().split("_")[1]
        assert _cli("node", "join-token", "delete", spare_id, "--api", url).returncode == 0
        assert (
            len(json.loads(_cli("node", "join-token", "list", "-o", "json", "--api", url).stdout))
            == 1
        )

        (tmp_path / "node-1").mkdir()
        argv = ["agent", "--node", "node-1", "--api", url, "--address", "127.0.0.1"]
        argv += ["--dir", str(tmp_path / "node-1"), "--heartbeat", "0.5"]
        argv += ["--join-token-file", str(join)]
        agent = Proc(argv, tmp_path / "node-1.log").start()

        def up() -> bool:
            got = _cli("node", "list", "-o", "json", "--api", url)
            return got.returncode == 0 and any(
                n["name"] == "node-1" for n in json.loads(got.stdout)
            )

        wait_for(up, "node-1 to register", 60)
        assert (tmp_path / "node-1" / "tls" / "agent" / "tls.crt").exists()
        extra = tmp_path / "node-1" / "extra"
        extra.mkdir()  # a disk is an existing directory (the agent creates none)
        bad = _cli("disk", "add", "node-1", "/etc", "--capacity", "1GiB", "--api", url)
        assert bad.returncode != 0 and "system directory /etc" in bad.stdout + bad.stderr
        add = _cli(
            "disk",
            "add",
            "node-1",
            str(extra),
            "--capacity",
            "1GiB",
            "--name",
            "extra",
            "--api",
            url,
        )
        assert add.returncode == 0, add.stdout + add.stderr
        assert "not a mount point" in add.stderr  # served, with the warning
        assert _cli("disk", "drain", "node-1", "extra", "--api", url).returncode == 0
        assert _cli("disk", "remove", "node-1", "extra", "--api", url).returncode == 0
        wait_for(
            lambda: "no longer extra" in agent.output() if agent else False,
            "the agent to stop serving the removed disk",
        )
        agent.stop()
        removed = _cli("node", "remove", "node-1", "--api", url)
        assert removed.returncode == 0 and "2 certificate(s) revoked" in removed.stdout
        ca = CertificateAuthority.load(tmp_path / "ca")
        agent_serial = _serial(tmp_path / "node-1" / "tls" / "agent" / "tls.crt")
        assert agent_serial in {int(str(e["serial"])) for e in ca.revoked()}
    finally:
        if agent is not None:
            agent.stop()
        mgr.stop()


def test_the_token_goes_only_to_a_manager(cluster: Cluster) -> None:
    """A server with a certificate of the cluster's CA that is not a manager's (a stolen
    node certificate) does not get the join token: the agent checks the role first, on
    the connection it would send the token over."""
    import http.server
    import threading

    tmp = cluster.tmp
    cluster.ca.issue(Identity(cluster.ca.cluster, Role.AGENT, "node-9")).write(tmp / "stolen")
    seen: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            seen.append(self.requestline.encode() + b" " + (self.rfile.read(n) if n else b""))
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "stolen" / "tls.crt", tmp / "stolen" / "tls.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        fake = f"https://127.0.0.1:{srv.server_address[1]}"
        join = cluster.join_file()
        token = join.read_text().splitlines()[0]
        d = tmp / "node-1"
        d.mkdir()
        argv = ["agent", "--node", "node-1", "--api", fake, "--address", "127.0.0.1"]
        argv += ["--dir", str(d), "--join-token-file", str(join)]
        fooled = Proc(argv, tmp / "fooled.log").start()
        cluster.procs.append(fooled)
        assert fooled.p is not None and fooled.p.wait(60) != 0
        assert "is not a cargohold manager" in fooled.output()
        assert seen and all(b"/livez" in r for r in seen)  # it was asked, and only that
        assert not any(token.encode() in r for r in seen)
    finally:
        srv.shutdown()
        srv.server_close()
    # the token still works with the real manager
    cluster.agent("node-1", join)
    wait_for(lambda: cluster.up("node-1"), "node-1 to join the real manager", 60)


def test_a_live_node_cannot_be_taken_over_a_reinstalled_one_joins_again(cluster: Cluster) -> None:
    first = cluster.agent("node-1", cluster.join_file())
    wait_for(lambda: cluster.up("node-1"), "node-1 to register", 60)
    old_cert = cluster.tmp / "node-1" / "tls" / "agent" / "tls.crt"
    old_serial = _serial(old_cert)
    # a second agent under the live node's name, with a valid token: refused
    d2 = cluster.tmp / "node-1-twin"
    d2.mkdir()
    argv = ["agent", "--node", "node-1", "--api", cluster.url, "--address", "127.0.0.1"]
    argv += ["--dir", str(d2), "--join-token-file", str(cluster.join_file())]
    twin = Proc(argv, cluster.tmp / "twin.log").start()
    cluster.procs.append(twin)
    assert twin.p is not None and twin.p.wait(60) != 0
    assert "live agent" in twin.output()
    assert not (d2 / "tls" / "agent" / "tls.crt").exists()
    # the node is reinstalled: its agent and its keys are gone; once it is marked down
    # it joins again under its name, and the old installation's certificates are revoked
    first.stop()
    shutil.rmtree(cluster.tmp / "node-1" / "tls")
    wait_for(lambda: cluster.nodes()["node-1"]["state"] == "down", "node-1 marked down", 30)
    cluster.agent("node-1", cluster.join_file())
    wait_for(lambda: cluster.up("node-1"), "the reinstalled node-1 to register", 60)
    assert _serial(old_cert) != old_serial
    assert old_serial in {int(str(e["serial"])) for e in cluster.ca.revoked()}
