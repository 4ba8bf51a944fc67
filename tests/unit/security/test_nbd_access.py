"""Who may use a volume's network NBD endpoint (policy.nbd_client_allowed, nbd_authorizer)
and the qemu/GnuTLS layout of a credentials directory (x509_dir.lay_out)."""

from __future__ import annotations

import os

import pytest

from cargohold.errors import ConfigError, PermissionDenied, Unauthenticated
from cargohold.security.identity import Identity, Role
from cargohold.security.policy import nbd_authorizer, nbd_client_allowed
from cargohold.security.x509_dir import lay_out

C = "c1"


def test_only_the_agent_of_the_attached_node_may_connect():
    assert nbd_client_allowed(Identity(C, Role.AGENT, "node-1"), "node-1")
    refused = [
        Identity(C, Role.AGENT, "node-2"),
        Identity(C, Role.AGENT, "node-1", tenant="t1"),
        Identity(C, Role.CSI, "node-1"),
        Identity(C, Role.ENGINE, "vol"),
        Identity(C, Role.REPLICA, "node-1"),
        Identity(C, Role.MANAGER, "m"),
        Identity(C, Role.ADMIN, "root"),
        Identity(C, Role.OPERATOR, "op"),
        Identity(C, Role.READER, "r"),
    ]
    for ident in refused:
        assert not nbd_client_allowed(ident, "node-1"), ident


def test_the_authorizer_says_who_was_refused_and_why():
    authorize = nbd_authorizer("vol", "node-1")
    good = Identity(C, Role.AGENT, "node-1")
    assert authorize(good) is good
    with pytest.raises(Unauthenticated):
        authorize(None)
    with pytest.raises(
        PermissionDenied, match=r"agent/node-2 may not use .* volume vol: only agent/node-1"
    ):
        authorize(Identity(C, Role.AGENT, "node-2"))


def creds(d):
    d.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt", "ca.crl"):
        (d / name).write_text(name)
    return d


def test_lay_out_links_the_files_in_qemu_names_and_follows_renewals(tmp_path):
    src = creds(tmp_path / "creds")
    out = lay_out(src, tmp_path / "x509")
    assert sorted(os.listdir(out)) == [
        "ca-cert.pem",
        "ca-crl.pem",
        "client-cert.pem",
        "client-key.pem",
    ]
    assert (out / "client-key.pem").read_text() == "tls.key"
    assert all(
        (out / n).is_symlink() and not os.path.isabs(os.readlink(out / n)) for n in os.listdir(out)
    )
    (src / "tls.crt").write_text("renewed")
    assert (out / "client-cert.pem").read_text() == "renewed"
    server = lay_out(src, tmp_path / "x509", side="server")  # again, other names: fine
    assert (server / "server-cert.pem").read_text() == "renewed"


def test_lay_out_refuses_what_it_should_not_touch(tmp_path):
    with pytest.raises(ConfigError, match="not a credentials directory"):
        lay_out(tmp_path, tmp_path / "x")
    src = creds(tmp_path / "creds")
    (tmp_path / "x509").mkdir()
    (tmp_path / "x509" / "ca-cert.pem").write_text("mine")
    with pytest.raises(ConfigError, match="not a link"):
        lay_out(src, tmp_path / "x509")
    with pytest.raises(ConfigError, match="side"):
        lay_out(src, tmp_path / "y", side="both")
    (src / "ca.crl").unlink()  # optional
    assert not (lay_out(src, tmp_path / "z") / "ca-crl.pem").exists()


def test_the_ca_x509_dir_command(tmp_path):
    from typer.testing import CliRunner

    from cargohold.cli.main import app

    src = creds(tmp_path / "creds")
    r = CliRunner().invoke(app, ["ca", "x509-dir", str(src), str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x" / "client-key.pem").read_text() == "tls.key"
    r = CliRunner().invoke(app, ["ca", "x509-dir", str(tmp_path / "none"), str(tmp_path / "y")])
    assert r.exit_code == 2 and "not a credentials directory" in r.output
