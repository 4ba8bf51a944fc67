"""etcd as cargohold runs it (cargohold/security/etcd.py): https with client-certificate
authentication, certificates from etcd's own CA. A real etcd (tests/etcd_proc.py); the
contract suite runs over it too (test_state_store.py, backend "etcd-tls"). Here: who etcd
refuses, and what the manager's client does with its credentials."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from cargohold.control.state import EtcdStateStore, open_store
from cargohold.errors import ConfigError, ManagerUnavailable
from cargohold.security import etcd as etcd_tls
from cargohold.security import kube_secrets as ks
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials
from tests.etcd_proc import EtcdProcess, etcd_fixture, find_etcd

etcd = etcd_fixture(scope="module", tls=True)


def _ns() -> str:
    return f"/t-{uuid.uuid4().hex[:12]}"


def _raw_get(etcd: EtcdProcess, context: ssl.SSLContext) -> int:
    """POST /v3/kv/range with ``context``: the HTTP status (ssl/URL errors propagate)."""
    req = urllib.request.Request(etcd.url + "/v3/kv/range", data=b'{"key": "AA=="}', method="POST")
    with urllib.request.urlopen(req, timeout=3.0, context=context) as r:
        return int(r.status)


def _trusting(etcd: EtcdProcess, creds: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts etcd's CA (so that only etcd can refuse) and presents
    the certificate in ``creds``, or none."""
    ctx = ssl.create_default_context(cafile=str(Path(etcd.client_tls) / "ca.crt"))
    ctx.check_hostname = False
    if creds is not None:
        ctx.load_cert_chain(creds / "tls.crt", creds / "tls.key")
    return ctx


REFUSED = (ssl.SSLError, urllib.error.URLError, ConnectionError)


def _refused(etcd: EtcdProcess, creds: Path | None) -> str:
    """etcd refuses the handshake of a client presenting ``creds``: what the client saw."""
    with pytest.raises(REFUSED) as e:
        _raw_get(etcd, _trusting(etcd, creds))
    text = str(e.value)
    assert "CERTIFICATE_VERIFY_FAILED" not in text  # the client did not refuse the server
    return text


async def test_the_managers_client_certificate_is_admitted(etcd: EtcdProcess) -> None:
    store = open_store(f"etcd:{etcd.url}", etcd_tls=etcd.client_tls)
    try:
        assert isinstance(store, EtcdStateStore)
        store.namespace = _ns()
        rev = await store.put("/k", b"v")
        got = await store.get("/k")
        assert got is not None and got.value == b"v" and got.mod_revision == rev
    finally:
        await store.close()


def test_a_client_without_a_certificate_is_refused(etcd: EtcdProcess) -> None:
    assert _raw_get(etcd, _trusting(etcd, Path(etcd.client_tls))) == 200  # the same, admitted
    _refused(etcd, None)
    # and etcd goes on serving the manager
    assert _raw_get(etcd, Credentials.load(etcd.client_tls).client_context()) == 200


async def test_the_store_without_a_certificate_says_etcd_is_unreachable(
    etcd: EtcdProcess,
) -> None:
    store = EtcdStateStore([etcd.url], namespace=_ns())  # https, no client certificate
    try:
        with pytest.raises(ManagerUnavailable, match="etcd unreachable"):
            await store.get("/k")
    finally:
        await store.close()


def test_a_certificate_of_the_cluster_ca_is_refused(etcd: EtcdProcess, tmp_path: Path) -> None:
    """An agent's, a CSI driver's or even a manager's certificate from the cluster's CA
    does not open etcd: only etcd's CA's certificates do."""
    cluster = CertificateAuthority.load(etcd.cluster_ca)
    for role in (Role.AGENT, Role.CSI, Role.MANAGER):
        creds = cluster.issue(Identity(cluster.cluster, role, "x")).write(tmp_path / role)
        _refused(etcd, creds)
    assert _raw_get(etcd, Credentials.load(etcd.client_tls).client_context()) == 200


def test_a_certificate_of_another_ca_is_refused(etcd: EtcdProcess, tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other", "c-other")
    _refused(etcd, etcd_tls.issue_client(etcd_tls.etcd_ca(other), "mallory").write(tmp_path))


def test_a_revoked_client_certificate_is_refused(tmp_path: Path) -> None:
    """etcd reads ca.crl on every connection: revoking the manager's etcd certificate
    locks it out without restarting etcd; a newly issued one works."""
    with EtcdProcess(name="revoke", tls=True) as proc:
        ca = CertificateAuthority.load(Path(proc.cluster_ca) / etcd_tls.ETCD_CA_DIR)
        old = Credentials.load(proc.client_tls)
        assert _raw_get(proc, old.client_context()) == 200
        pem = (Path(proc.client_tls) / "tls.crt").read_bytes()
        serial = x509.load_pem_x509_certificate(pem).serial_number
        ca.revoke(serial, "test")
        shutil.copy(ca.dir / "ca.crl", Path(proc.cluster_ca).parent / "member" / "ca.crl")
        _refused(proc, Path(proc.client_tls))
        fresh = Credentials.load(etcd_tls.issue_client(ca, "test").write(tmp_path / "new"))
        assert _raw_get(proc, fresh.client_context()) == 200


async def test_a_renewed_client_certificate_is_picked_up(etcd: EtcdProcess, tmp_path: Path) -> None:
    """The store rebuilds its HTTP client when the credentials files change."""
    d = tmp_path / "creds"
    shutil.copytree(etcd.client_tls, d)
    creds = Credentials.load(d)
    store = EtcdStateStore([etcd.url], namespace=_ns(), tls=creds)
    try:
        await store.put("/a", b"1")
        first = store._client
        ca = CertificateAuthority.load(Path(etcd.cluster_ca) / etcd_tls.ETCD_CA_DIR)
        etcd_tls.issue_client(ca, "renewed").write(d)
        creds._checked = 0.0  # do not wait out the once-a-second check
        await store.put("/b", b"2")
        assert store._client is not first
        assert [e.key for e in await store.range("/")] == ["/a", "/b"]
    finally:
        await store.close()


def test_tls_with_an_http_endpoint_is_a_config_error(etcd: EtcdProcess) -> None:
    with pytest.raises(ConfigError, match="use https://"):
        open_store("etcd:http://127.0.0.1:2379", etcd_tls=etcd.client_tls)
    with pytest.raises(ConfigError, match="not etcd"):
        open_store("memory:", etcd_tls=etcd.client_tls)
    with pytest.raises(ConfigError, match="cannot load TLS credentials"):
        open_store(f"etcd:{etcd.url}", etcd_tls="/nonexistent")


def test_member_flags_name_every_file() -> None:
    flags = dict(f.split("=", 1) for f in etcd_tls.server_flags("/tls"))
    assert flags["--client-cert-auth"] == flags["--peer-client-cert-auth"] == "true"
    assert flags["--trusted-ca-file"] == flags["--peer-trusted-ca-file"] == "/tls/ca.crt"
    assert flags["--client-crl-file"] == flags["--peer-crl-file"] == "/tls/ca.crl"
    assert flags["--cert-file"] == flags["--peer-cert-file"] == "/tls/tls.crt"
    assert flags["--peer-cert-allowed-hostname"] == etcd_tls.PEER_HOST


def _mount(doc: dict, where: Path) -> str:
    where.mkdir(parents=True)
    for k, v in doc["data"].items():
        (where / k).write_bytes(base64.b64decode(v))
    return str(where)


def _tcp_free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peer_handshake(port: int, creds: str, trust: str) -> None:
    """A TLS handshake with a member's peer port, presenting ``creds``' certificate."""
    ctx = ssl.create_default_context(cafile=trust)
    ctx.check_hostname = False
    ctx.load_cert_chain(f"{creds}/tls.crt", f"{creds}/tls.key")
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            if not tls.recv(1024):  # TLS 1.3: a refused client certificate shows here
                raise ConnectionError("closed")


def test_three_members_with_the_kube_secrets_form_a_cluster(tmp_path: Path) -> None:
    """deploy/ha's etcd flags with the Secrets of `cargohold ca kube-secrets`: three
    members talk over peer TLS, the manager's client certificate reads what another
    member wrote, and it cannot pass for a peer."""
    ca = CertificateAuthority.create(tmp_path / "ca", "c-ha")
    secrets = {
        d["metadata"]["name"]: d
        for d in ks.kube_secrets(ca, "ns", etcd_hosts=["127.0.0.1"], etcd_members=3)
    }
    member = _mount(secrets[ks.ETCD_SECRET], tmp_path / "member")
    client = _mount(secrets[ks.ETCD_CLIENT_SECRET], tmp_path / "client")
    ports = [(_tcp_free(), _tcp_free()) for _ in range(3)]
    cluster = ",".join(f"m{i}=https://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i, (cp, pp) in enumerate(ports):
            log = open(tmp_path / f"m{i}.log", "w")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [
                        find_etcd(),
                        f"--name=m{i}",
                        f"--data-dir={tmp_path / f'd{i}'}",
                        f"--listen-client-urls=https://127.0.0.1:{cp}",
                        f"--advertise-client-urls=https://127.0.0.1:{cp}",
                        f"--listen-peer-urls=https://127.0.0.1:{pp}",
                        f"--initial-advertise-peer-urls=https://127.0.0.1:{pp}",
                        f"--initial-cluster={cluster}",
                        "--initial-cluster-state=new",
                        "--heartbeat-interval=10",
                        "--election-timeout=100",
                        *etcd_tls.server_flags(member),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        creds = Credentials.load(client)

        async def roundtrip() -> bytes | None:
            one = EtcdStateStore([f"https://127.0.0.1:{ports[0][0]}"], tls=creds)
            three = EtcdStateStore([f"https://127.0.0.1:{ports[2][0]}"], tls=creds)
            try:
                await one.put("/ha", b"quorum")
                got = await three.get("/ha")
                return got.value if got else None
            finally:
                await one.close()
                await three.close()

        deadline = time.monotonic() + 30
        while True:
            try:
                assert asyncio.run(roundtrip()) == b"quorum"
                break
            except ManagerUnavailable:
                assert all(p.poll() is None for p in procs), (tmp_path / "m0.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "m0.log").read_text()[-3000:]
                time.sleep(0.2)
        trust = f"{member}/ca.crt"
        _peer_handshake(ports[1][1], member, trust)  # a member's certificate: admitted
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _peer_handshake(ports[1][1], client, trust)  # the manager's: not a peer
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
