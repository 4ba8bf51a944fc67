"""The Kubernetes Secrets that hold a cluster's credentials (``cargohold ca kube-secrets``,
docs/kubernetes.md "Bootstrap"): pure, it returns v1 Secret objects as dicts.

=========================== ================= =====================================================
Secret                      type              mounted by (deploy/)
=========================== ================= =====================================================
``cargohold-ca``            Opaque            the manager only: ca.crt, ca.key, trust.crt, ca.crl,
                                              cluster (it signs the agents' certificates)
``cargohold-trust``         Opaque            the agents: ca.crt, ca.crl (whom to trust while
                                              they enrol with the join token)
``cargohold-manager-tls``   kubernetes.io/tls the manager's API (role manager; the Service's names)
``cargohold-csi-tls``       kubernetes.io/tls the CSI controller and node plugins (role csi, the
                                              tenant of this Kubernetes cluster)
``cargohold-etcd-tls``      kubernetes.io/tls etcd's members (deploy/ha; from etcd's CA)
``cargohold-etcd-client-tls`` kubernetes.io/tls the managers' etcd client (deploy/ha; etcd's CA)
=========================== ================= =====================================================

Every ``*-tls`` Secret has the keys of a credentials directory (``tls.py``): tls.crt,
tls.key, ca.crt, ca.crl, so it mounts as ``--tls-dir``. The agents' own certificates are
not here: each agent enrols with the join token (Secret ``cargohold-join-token``, made by
``cargohold node join-token``) and keeps what it was issued on its node.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from cargohold.security import etcd as etcd_tls
from cargohold.security.ca import CertificateAuthority, Issued
from cargohold.security.identity import Identity, Role, check_name
from cargohold.security.tls import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE

CA_SECRET = "cargohold-ca"
TRUST_SECRET = "cargohold-trust"
MANAGER_SECRET = "cargohold-manager-tls"
CSI_SECRET = "cargohold-csi-tls"
ETCD_SECRET = "cargohold-etcd-tls"
ETCD_CLIENT_SECRET = "cargohold-etcd-client-tls"
JOIN_TOKEN_SECRET = "cargohold-join-token"  # made by `cargohold node join-token`, key "token"

MANAGER_SERVICE = "cargohold-manager"
ETCD_SERVICE = "cargohold-etcd"
CA_KEYS = ("ca.crt", "ca.key", "trust.crt", "ca.crl", "cluster")
DEFAULT_LIFETIME = dt.timedelta(days=90)
LABELS = {"app.kubernetes.io/part-of": "cargohold"}


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Service (or a StatefulSet pod's ``<pod>.<service>``) answers to."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def etcd_member_hosts(namespace: str, members: int) -> list[str]:
    """Every name etcd's members are dialled by: each pod of the StatefulSet through the
    headless Service, the Service itself, and loopback (etcd's own gateway)."""
    hosts = []
    for i in range(members):
        hosts += service_names(f"{ETCD_SERVICE}-{i}.{ETCD_SERVICE}", namespace)
    return [*hosts, *service_names(ETCD_SERVICE, namespace), "localhost", "127.0.0.1"]


def secret(
    name: str, namespace: str, data: Mapping[str, bytes], tls: bool = False
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "type": "kubernetes.io/tls" if tls else "Opaque",
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
    }


def tls_secret(name: str, namespace: str, issued: Issued) -> dict[str, Any]:
    assert issued.key is not None
    files = {CERT_FILE: issued.cert, KEY_FILE: issued.key, CA_FILE: issued.trust}
    return secret(name, namespace, {**files, CRL_FILE: issued.crl}, tls=True)


def kube_secrets(
    ca: CertificateAuthority,
    namespace: str,
    *,
    tenant: str | None = None,
    csi_name: str = "kubernetes",
    manager_hosts: Iterable[str] = (),
    etcd_members: int = 3,
    etcd_hosts: Iterable[str] = (),
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
) -> list[dict[str, Any]]:
    """Every Secret of the table above, with fresh keys and certificates (``lifetime``);
    ``etcd_members=0`` leaves etcd's out (deploy/base: SQLite)."""
    check_name("namespace", namespace)
    ca_files = {k: (ca.dir / k).read_bytes() for k in CA_KEYS}
    out = [
        secret(CA_SECRET, namespace, ca_files),
        secret(TRUST_SECRET, namespace, {CA_FILE: ca.trust_pem(), CRL_FILE: ca.crl_pem()}),
        tls_secret(
            MANAGER_SECRET,
            namespace,
            ca.issue(
                Identity(ca.cluster, Role.MANAGER, MANAGER_SERVICE),
                [*service_names(MANAGER_SERVICE, namespace), *manager_hosts],
                lifetime,
            ),
        ),
        tls_secret(
            CSI_SECRET,
            namespace,
            ca.issue(Identity(ca.cluster, Role.CSI, csi_name, tenant), [], lifetime),
        ),
    ]
    if etcd_members > 0:
        eca = etcd_tls.etcd_ca(ca)
        hosts = [*etcd_member_hosts(namespace, etcd_members), *etcd_hosts]
        member = etcd_tls.issue_member(eca, ETCD_SERVICE, hosts, lifetime)
        out.append(tls_secret(ETCD_SECRET, namespace, member))
        client = etcd_tls.issue_client(eca, MANAGER_SERVICE, lifetime)
        out.append(tls_secret(ETCD_CLIENT_SECRET, namespace, client))
    return out
