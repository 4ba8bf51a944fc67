"""``cargohold ca kube-secrets``: the Secrets of a Kubernetes installation parse, are valid
v1 Secrets (kubernetes-validate, like deploy/), mount as credentials directories that
``tls.py`` loads, and carry the identities and names each component needs."""

from __future__ import annotations

import base64
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from cargohold.cli.main import app
from cargohold.security import etcd as etcd_tls
from cargohold.security import kube_secrets as ks
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials, cert_identity

K8S_VERSION = "1.32"
NS = "storage"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kube") / "ca"
    CertificateAuthority.create(d, "c-kube")
    return d


def run(*args: str) -> str:
    result = CliRunner().invoke(app, ["ca", "kube-secrets", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def secrets(ca_dir: Path) -> dict[str, dict]:
    out = run("--ca", str(ca_dir), "--namespace", NS, "--tenant", "k8s-a",
              "--etcd-hosts", "etcd.example.org", "--manager-host", "10.1.2.3")  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {d["metadata"]["name"]: d for d in docs}


def files(doc: dict) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in doc["data"].items()}


def mount(doc: dict, where: Path) -> Path:
    """What the kubelet does with a Secret volume: one file per key."""
    where.mkdir(parents=True)
    for k, v in files(doc).items():
        (where / k).write_bytes(v)
    return where


def sans(pem: bytes) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return san.get_values_for_type(x509.DNSName), ips


def test_every_secret_is_a_valid_v1_secret(secrets: dict[str, dict]) -> None:
    assert set(secrets) == {
        ks.CA_SECRET, ks.TRUST_SECRET, ks.MANAGER_SECRET, ks.CSI_SECRET,
        ks.ETCD_SECRET, ks.ETCD_CLIENT_SECRET,
    }  # fmt: skip
    for doc in secrets.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NS
        if doc["metadata"]["name"].endswith("-tls"):
            assert doc["type"] == "kubernetes.io/tls"
            assert set(doc["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.crl"}
        else:
            assert doc["type"] == "Opaque"


def test_the_ca_secret_is_the_ca_directory(secrets: dict[str, dict], ca_dir: Path) -> None:
    got = files(secrets[ks.CA_SECRET])
    assert set(got) == {"ca.crt", "ca.key", "trust.crt", "ca.crl", "cluster"}
    assert all(got[k] == (ca_dir / k).read_bytes() for k in got)
    trust = files(secrets[ks.TRUST_SECRET])
    assert trust == {"ca.crt": got["trust.crt"], "ca.crl": got["ca.crl"]}  # no key
    # the mounted CA Secret is a CA directory the manager can issue from
    assert CertificateAuthority.load(mount(secrets[ks.CA_SECRET], ca_dir.parent / "m")).cluster


def test_each_tls_secret_mounts_as_a_credentials_directory(
    secrets: dict[str, dict], tmp_path: Path
) -> None:
    expected = {
        ks.MANAGER_SECRET: Identity("c-kube", Role.MANAGER, "cargohold-manager"),
        ks.CSI_SECRET: Identity("c-kube", Role.CSI, "kubernetes", "k8s-a"),
        ks.ETCD_SECRET: Identity("c-kube", Role.ETCD, "cargohold-etcd"),
        ks.ETCD_CLIENT_SECRET: Identity("c-kube", Role.MANAGER, "cargohold-manager"),
    }
    for name, ident in expected.items():
        creds = Credentials.load(mount(secrets[name], tmp_path / name))  # loads: key fits
        assert creds.identity() == ident, name
        key = serialization.load_pem_private_key(files(secrets[name])["tls.key"], None)
        cert = x509.load_pem_x509_certificate(files(secrets[name])["tls.crt"])
        assert key.public_key() == cert.public_key()


def test_names_each_peer_dials(secrets: dict[str, dict]) -> None:
    dns, ips = sans(files(secrets[ks.MANAGER_SECRET])["tls.crt"])
    assert f"cargohold-manager.{NS}.svc" in dns and ips == ["10.1.2.3"]
    dns, ips = sans(files(secrets[ks.ETCD_SECRET])["tls.crt"])
    for i in range(3):  # the peer URLs of deploy/ha's StatefulSet
        assert f"cargohold-etcd-{i}.cargohold-etcd" in dns
        assert f"cargohold-etcd-{i}.cargohold-etcd.{NS}.svc" in dns
    assert {"etcd.example.org", etcd_tls.PEER_HOST, "localhost"} <= set(dns)
    assert ips == ["127.0.0.1"]
    assert etcd_tls.PEER_HOST not in sans(files(secrets[ks.ETCD_CLIENT_SECRET])["tls.crt"])[0]


def test_etcd_trusts_its_own_ca_not_the_clusters(secrets: dict[str, dict]) -> None:
    """An agent's or CSI driver's certificate (cluster CA) must not open etcd."""
    cluster_trust = files(secrets[ks.TRUST_SECRET])["ca.crt"]
    etcd = files(secrets[ks.ETCD_SECRET])
    assert etcd["ca.crt"] != cluster_trust
    assert files(secrets[ks.ETCD_CLIENT_SECRET])["ca.crt"] == etcd["ca.crt"]
    issuer = x509.load_pem_x509_certificate(etcd["tls.crt"]).issuer
    assert issuer == x509.load_pem_x509_certificate(etcd["ca.crt"]).subject
    for name in (ks.MANAGER_SECRET, ks.CSI_SECRET):
        assert files(secrets[name])["ca.crt"] == cluster_trust


def test_lifetime_and_no_etcd(ca_dir: Path) -> None:
    out = run("--ca", str(ca_dir), "--etcd-members", "0", "--days", "2")
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d}
    assert ks.ETCD_SECRET not in docs and docs[ks.CA_SECRET]["metadata"]["namespace"] == (
        "cargohold-system"
    )
    cert = x509.load_pem_x509_certificate(files(docs[ks.CSI_SECRET])["tls.crt"])
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400
    assert 2 <= days < 2.01  # (back-dated by a few minutes for clock skew)
    assert cert_identity(files(docs[ks.CSI_SECRET])["tls.crt"]).tenant is None


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ca", "kube-secrets", "--ca", str(tmp_path)])
    assert result.exit_code != 0 and "not a cargohold CA directory" in result.output
    result = CliRunner().invoke(
        app, ["ca", "kube-secrets", "--ca", str(tmp_path), "--namespace", "../x"]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
