"""What the node agent hands its children (agent/credentials.py): issued from --ca-dir with
the right identities, renewed at half life, plaintext only when nothing was given."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from cargohold.agent.credentials import NodeCredentials, engine_credentials
from cargohold.agent.processes import engine_argv, replica_server_argv
from cargohold.errors import ConfigError
from cargohold.security import ca as ca_mod
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import cert_identity

CLUSTER = "c-agent"


@pytest.fixture
def ca_dir(tmp_path):
    CertificateAuthority.create(tmp_path / "ca", CLUSTER)
    return str(tmp_path / "ca")


def ident(directory: str) -> Identity:
    with open(os.path.join(directory, "tls.crt"), "rb") as f:
        return cert_identity(f.read())


def test_issued_from_the_ca_with_the_right_identities(tmp_path, ca_dir):
    nc = NodeCredentials("node-1", str(tmp_path / "node"), ca_dir=ca_dir)
    assert not nc.plaintext
    rs = nc.replica_server_dir()
    assert ident(rs) == Identity(CLUSTER, Role.REPLICA, "node-1")
    assert nc.client() is not None and nc.client().identity() == Identity(  # type: ignore[union-attr]
        CLUSTER, Role.AGENT, "node-1"
    )
    eng = engine_credentials(nc, "pvc-9")
    assert ident(eng) == Identity(CLUSTER, Role.ENGINE, "pvc-9")
    assert os.stat(os.path.join(eng, "tls.key")).st_mode & 0o077 == 0
    assert replica_server_argv("node-1", "127.0.0.1", 9500, ["/d"], rs)[-2:] == ["--tls-dir", rs]
    argv = engine_argv("pvc-9", 1, ["r@h:1"], None, "127.0.0.1", 0, "/c", tls_dir=eng)
    assert argv[-2:] == ["--tls-dir", eng]


def test_renewed_at_half_life_not_before(tmp_path, ca_dir):
    nc = NodeCredentials("node-1", str(tmp_path / "node"), ca_dir=ca_dir)
    eng = engine_credentials(nc, "pvc-1")
    first = open(os.path.join(eng, "tls.crt"), "rb").read()
    nc.renew()
    assert open(os.path.join(eng, "tls.crt"), "rb").read() == first  # still fresh
    real = ca_mod._now
    ca_mod._now = lambda: real() - dt.timedelta(hours=13)  # more than half of 24 h ago
    try:
        (tmp_path / "node" / "tls" / "engines" / "pvc-1" / "tls.crt").unlink()
        engine_credentials(nc, "pvc-1")
    finally:
        ca_mod._now = real
    aged = open(os.path.join(eng, "tls.crt"), "rb").read()
    nc.renew()
    renewed = open(os.path.join(eng, "tls.crt"), "rb").read()
    assert renewed not in (aged, first)


def test_nothing_given_is_plaintext_said_out_loud(tmp_path, caplog):
    nc = NodeCredentials("node-1", str(tmp_path))
    assert nc.plaintext and nc.replica_server_dir() is None and nc.client() is None
    assert engine_credentials(nc, "v") is None
    assert "PLAINTEXT" in caplog.text
    assert replica_server_argv("n", "127.0.0.1", 1, ["/d"])[-1] == "--plaintext"


def test_without_a_ca_an_engine_cannot_be_given_a_certificate(tmp_path, ca_dir):
    ca = CertificateAuthority.load(ca_dir)
    ca.issue(Identity(CLUSTER, Role.AGENT, "n")).write(tmp_path / "agent")
    ca.issue(Identity(CLUSTER, Role.REPLICA, "n")).write(tmp_path / "replica")
    nc = NodeCredentials(
        "n",
        str(tmp_path / "node"),
        tls_dir=str(tmp_path / "agent"),
        replica_tls_dir=str(tmp_path / "replica"),
    )
    assert nc.replica_server_dir() == str(tmp_path / "replica")
    with pytest.raises(ConfigError, match="--ca-dir"):
        engine_credentials(nc, "v")


def test_the_agents_manager_certificate_alone_leaves_the_data_path_plaintext(tmp_path, ca_dir):
    """A certificate towards the manager alone (--tls-dir) makes no engine certificates:
    without --ca-dir, a join or --replica-tls-dir the data path stays plaintext (loudly).
    ``cargohold up`` gives its agents --ca-dir (docs/security.md, "The replica wire")."""
    ca = CertificateAuthority.load(ca_dir)
    ca.issue(Identity(CLUSTER, Role.AGENT, "n")).write(tmp_path / "agent")
    nc = NodeCredentials("n", str(tmp_path / "node"), tls_dir=str(tmp_path / "agent"))
    assert nc.plaintext and nc.replica_server_dir() is None and nc.client() is None


def test_a_joined_agent_hands_out_the_manager_signed_certificates(tmp_path, ca_dir):
    """No --ca-dir: the replica server's and the engines' credentials are the ones the
    manager signed when the agent joined (tls/replica-server) and before each engine
    started (tls/engines/<volume>); an engine without one yet is a clear ConfigError."""
    ca = CertificateAuthority.load(ca_dir)
    node = tmp_path / "node"
    ca.issue(Identity(CLUSTER, Role.AGENT, "n")).write(node / "tls" / "agent")
    ca.issue(Identity(CLUSTER, Role.REPLICA, "n")).write(node / "tls" / "replica-server")
    ca.issue(Identity(CLUSTER, Role.ENGINE, "v")).write(node / "tls" / "engines" / "v")
    nc = NodeCredentials("n", str(node), joins=True)
    assert not nc.plaintext
    assert ident(nc.replica_server_dir()) == Identity(CLUSTER, Role.REPLICA, "n")  # type: ignore[arg-type]
    assert nc.client().identity() == Identity(CLUSTER, Role.AGENT, "n")  # type: ignore[union-attr]
    assert ident(engine_credentials(nc, "v")) == Identity(CLUSTER, Role.ENGINE, "v")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has not signed one"):
        engine_credentials(nc, "w")


def test_an_agent_about_to_join_is_not_announced_plaintext(tmp_path, caplog):
    nc = NodeCredentials("n", str(tmp_path / "node"), joins=True)
    assert nc.plaintext  # not joined yet
    assert "PLAINTEXT" not in caplog.text
