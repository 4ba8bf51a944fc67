"""The cluster CA and mutual TLS, over real sockets on loopback: who gets in, who does not,
and that renewal, rotation and revocation take effect without restarting a server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509

from cargohold.errors import ConfigError, InvalidArgument, PermissionDenied, Unauthenticated
from cargohold.security import ca as ca_mod
from cargohold.security.ca import CertificateAuthority, make_csr, new_key
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials, cert_identity, peer_identity, require

CLUSTER = "c-test"


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.create(tmp_path / "ca", CLUSTER)


def creds(ca, tmp_path, role, name, **kw):
    d = tmp_path / f"{role}-{name}"
    ca.issue(Identity(CLUSTER, Role(role), name), hosts=["127.0.0.1"], **kw).write(d)
    return Credentials.load(d)


class Server:
    """An echo server that records each client's identity."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self.seen: list[Identity | None] = []

    async def __aenter__(self) -> Server:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.seen.append(peer_identity(w.transport))
            data = await r.read(100)
            w.write(data)
            await w.drain()
            w.close()

        self.srv = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=self.creds.server_context()
        )
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.srv.close()
        await self.srv.wait_closed()


async def talk(port: int, ctx: ssl.SSLContext | None) -> bytes:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 5)
    w.write(b"ping")
    await w.drain()
    data = await asyncio.wait_for(r.read(100), 5)
    w.close()
    return data


async def refused(port: int, ctx: ssl.SSLContext | None) -> bool:
    try:
        data = await talk(port, ctx)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return data != b"ping"  # TLS 1.3: the server's refusal can arrive after the handshake


async def test_mutual_tls_names_the_peer(ca, tmp_path):
    server = creds(ca, tmp_path, "replica", "node-1")
    engine = creds(ca, tmp_path, "engine", "vol-a")
    async with Server(server) as s:
        assert await talk(s.port, engine.client_context()) == b"ping"
    assert s.seen == [Identity(CLUSTER, Role.ENGINE, "vol-a")]
    assert engine.identity() == Identity(CLUSTER, Role.ENGINE, "vol-a")


async def test_the_wrong_clients_are_refused_and_the_server_goes_on(ca, tmp_path):
    server = creds(ca, tmp_path, "replica", "node-1")
    good = creds(ca, tmp_path, "engine", "vol-a")
    other_ca = CertificateAuthority.create(tmp_path / "other", CLUSTER)
    foreign = creds(other_ca, tmp_path / "f", "engine", "vol-a")
    # no certificate at all: a client context that trusts our CA but presents nothing
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cafile=str(server.path("ca.crt")))
    real_now = ca_mod._now
    ca_mod._now = lambda: real_now() - dt.timedelta(days=3)
    try:
        expired = creds(ca, tmp_path / "e", "engine", "vol-a")
    finally:
        ca_mod._now = real_now
    async with Server(server) as s:
        assert await refused(s.port, None)  # plain TCP
        assert await refused(s.port, anonymous)
        assert await refused(s.port, foreign.client_context())
        assert await refused(s.port, expired.client_context())
        assert await talk(s.port, good.client_context()) == b"ping"
    assert s.seen == [Identity(CLUSTER, Role.ENGINE, "vol-a")]


async def test_a_client_refuses_a_server_of_another_ca(ca, tmp_path):
    other_ca = CertificateAuthority.create(tmp_path / "other", CLUSTER)
    impostor = creds(other_ca, tmp_path / "i", "replica", "node-1")
    engine = creds(ca, tmp_path, "engine", "vol-a")
    async with Server(impostor) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            await talk(s.port, engine.client_context())


async def test_revocation_reaches_a_running_server(ca, tmp_path):
    server = creds(ca, tmp_path, "replica", "node-1")
    agent_dir = tmp_path / "agent"
    issued = ca.issue(Identity(CLUSTER, Role.AGENT, "node-2"))
    issued.write(agent_dir)
    agent = Credentials.load(agent_dir)
    async with Server(server) as s:
        assert await talk(s.port, agent.client_context()) == b"ping"
        ca.revoke(issued.serial, "node-2 removed from the cluster")
        (server.directory / "ca.crl").write_bytes(ca.crl_pem())  # what the agent distributes
        server._checked = 0.0  # do not wait for the once-a-second check
        assert await refused(s.port, agent.client_context())
    assert ca.revoked()[0]["reason"] == "node-2 removed from the cluster"


def refresh(c: Credentials, ca: CertificateAuthority) -> None:
    """What a renewal hands a component: the trust bundle and the CRLs (and a new cert)."""
    (c.directory / "ca.crt").write_bytes(ca.trust_pem())
    (c.directory / "ca.crl").write_bytes(ca.crl_pem())
    c._checked = 0.0


async def test_rotation_stage_promote_retire_without_an_outage(ca, tmp_path):
    server = creds(ca, tmp_path, "replica", "node-1")
    old_client = creds(ca, tmp_path, "engine", "vol-a")
    async with Server(server) as s:
        ca.stage()  # 1: everybody learns the next CA; the old one still signs
        refresh(old_client, ca)
        refresh(server, ca)
        assert await talk(s.port, old_client.client_context()) == b"ping"
        ca.promote()  # 2: the new one signs; the old one stays trusted
        new_client = creds(ca, tmp_path / "n", "engine", "vol-b")
        assert await talk(s.port, old_client.client_context()) == b"ping"
        assert await talk(s.port, new_client.client_context()) == b"ping"
        # the server renews onto the new CA; both clients still get in
        ca.issue(Identity(CLUSTER, Role.REPLICA, "node-1")).write(server.directory)
        server._checked = 0.0
        assert await talk(s.port, old_client.client_context()) == b"ping"
        assert ca.retire() == 1  # 3: the old CA is gone from the bundle
        refresh(server, ca)
        assert await refused(s.port, old_client.client_context())
        assert await talk(s.port, new_client.client_context()) == b"ping"
    with pytest.raises(ConfigError, match="no staged CA"):
        ca.promote()


async def test_a_long_lived_ca_follows_a_rotation_made_by_another_process(ca, tmp_path):
    """The manager loads the CA once; ``cargohold ca rotate`` runs in another process. After
    promote the manager signs with the new CA, and its revocations write a CRL for every CA
    trusted now (without the new CA's CRL, every certificate of it would be refused)."""
    server = creds(ca, tmp_path, "replica", "node-1")
    operator = CertificateAuthority.load(ca.dir)  # `cargohold ca rotate DIR stage|promote`
    operator.stage()
    operator.promote()
    new = ca.issue(Identity(CLUSTER, Role.ENGINE, "vol-a"))  # by the long-lived instance
    assert x509.load_pem_x509_certificate(new.cert).issuer == operator.cert.subject
    assert ca.cert.subject == operator.cert.subject
    new.write(tmp_path / "engine-new")
    ca.revoke(12345, "a node removed, by the manager")  # rewrites ca.crl
    ca.issue(Identity(CLUSTER, Role.REPLICA, "node-1")).write(server.directory)
    server._checked = 0.0
    client = Credentials.load(tmp_path / "engine-new")
    async with Server(server) as s:
        assert await talk(s.port, client.client_context()) == b"ping"
    # a key and certificate caught half-written (mid-promote) are not taken
    good = ca.cert
    (ca.dir / "ca.key").write_bytes(ca_mod.key_pem(new_key()))
    assert (
        x509.load_pem_x509_certificate(ca.issue(Identity(CLUSTER, Role.AGENT, "n")).cert).issuer
        == good.subject
    )


async def test_a_renewed_certificate_is_served_without_a_restart(ca, tmp_path):
    server = creds(ca, tmp_path, "replica", "node-1")
    first = server.path("tls.crt").read_bytes()
    ca.issue(Identity(CLUSTER, Role.REPLICA, "node-1")).write(server.directory)
    server._checked = 0.0
    client = creds(ca, tmp_path, "engine", "vol-a")
    async with Server(server) as s:
        _r, w = await asyncio.open_connection("127.0.0.1", s.port, ssl=client.client_context())
        served = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.close()
    assert ssl.DER_cert_to_PEM_cert(served).encode() != first
    assert ssl.DER_cert_to_PEM_cert(served).strip() == server.path("tls.crt").read_text().strip()


def test_a_csr_is_signed_for_the_identity_the_ca_decides(ca, tmp_path):
    key = new_key()
    csr = make_csr(Identity(CLUSTER, Role.ADMIN, "mallory"), key)
    issued = ca.sign_csr(csr, Identity(CLUSTER, Role.AGENT, "node-7"))
    assert issued.key is None
    assert cert_identity(issued.cert) == Identity(CLUSTER, Role.AGENT, "node-7")
    with pytest.raises(InvalidArgument):
        ca.sign_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", Identity(CLUSTER, Role.AGENT, "x")
        )
    with pytest.raises(InvalidArgument, match="cluster"):
        ca.issue(Identity("c-other", Role.AGENT, "x"))


def test_ca_directory_rules(ca, tmp_path):
    with pytest.raises(ConfigError, match="already holds a CA"):
        CertificateAuthority.create(ca.dir, CLUSTER)
    assert CertificateAuthority.load(ca.dir).cluster == CLUSTER
    with pytest.raises(ConfigError, match="belongs to cluster"):
        CertificateAuthority.open_or_create(ca.dir, "c-other")
    assert (ca.dir / "ca.key").stat().st_mode & 0o077 == 0
    with pytest.raises(ConfigError, match="cannot load TLS credentials"):
        Credentials.load(tmp_path / "missing")


def test_require():
    engine = Identity(CLUSTER, Role.ENGINE, "v")
    assert require(engine, {Role.ENGINE}, CLUSTER) is engine
    with pytest.raises(Unauthenticated):
        require(None, {Role.ENGINE})
    with pytest.raises(Unauthenticated):
        require(engine, {Role.ENGINE}, "c-other")
    with pytest.raises(PermissionDenied):
        require(engine, {Role.AGENT, Role.MANAGER})
