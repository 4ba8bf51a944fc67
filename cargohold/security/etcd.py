"""etcd with mutual TLS: its own CA, the certificates its members and its one client (the
manager) get, and the etcd flags that use them. Called by ``cargohold up --backend etcd``
(the launcher), ``cargohold ca kube-secrets`` (deploy/ha) and the tests' etcd.

etcd admits every client whose certificate its trusted CA signed (``--client-cert-auth``).
Were that the cluster's CA, an agent's, an engine's or a CSI driver's certificate would
open the whole control plane's state. So etcd trusts a CA of its own, kept beside the
cluster's (``<cluster CA dir>/etcd``, same cluster id, same ``CertificateAuthority``), that
signs only etcd's members and the managers' etcd client certificates; its key never needs
to be on the manager. (etcd 3.4's ``--client-cert-allowed-hostname`` would have done it
with one CA, but it breaks etcd's own HTTP gateway, which is what the manager speaks.)
Members talk to each other only with certificates that carry ``PEER_HOST``
(``--peer-cert-allowed-hostname``), so a manager's client certificate cannot join as a peer.

Revocation: etcd reads ``ca.crl`` on every new connection (``--client-crl-file``,
``--peer-crl-file``) and refuses any serial listed there; it also reloads its certificate
and key on every handshake, so renewing them needs no restart. A new ``ca.crt`` (a CA
rotation) needs a restart of each member in turn.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable

from cargohold.security.ca import DEFAULT_LIFETIME, CertificateAuthority, Issued
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE

ETCD_CA_DIR = "etcd"
"""etcd's CA: this subdirectory of the cluster's CA directory."""
PEER_HOST = "peer.etcd.cargohold.invalid"
"""The DNS name only etcd members' certificates carry (``.invalid``: it never resolves)."""


def etcd_ca(cluster_ca: CertificateAuthority) -> CertificateAuthority:
    """etcd's CA beside ``cluster_ca`` (made on first use, for the same cluster id)."""
    return CertificateAuthority.open_or_create(cluster_ca.dir / ETCD_CA_DIR, cluster_ca.cluster)


def issue_member(
    ca: CertificateAuthority,
    name: str,
    hosts: Iterable[str],
    lifetime: dt.timedelta = DEFAULT_LIFETIME,
) -> Issued:
    """A member's certificate from etcd's CA (identity ``etcd/<name>``), valid as server
    and peer, for ``hosts``: the names and addresses clients and peers dial it by."""
    names = [*dict.fromkeys(hosts), PEER_HOST]
    return ca.issue(Identity(ca.cluster, Role.ETCD, name), names, lifetime)


def issue_client(
    ca: CertificateAuthority, name: str, lifetime: dt.timedelta = DEFAULT_LIFETIME
) -> Issued:
    """A manager's etcd client certificate from etcd's CA (identity ``manager/<name>``)."""
    return ca.issue(Identity(ca.cluster, Role.MANAGER, name), [], lifetime)


def server_flags(tls_dir: str | os.PathLike[str]) -> list[str]:
    """etcd's command-line flags for https with client-certificate authentication on the
    client and the peer port, from a member's credentials directory (``issue_member``).
    The listen and advertise URLs must be https:// (the caller's)."""
    d = os.fspath(tls_dir)

    def f(name: str) -> str:
        return os.path.join(d, name)

    return [
        f"--cert-file={f(CERT_FILE)}",
        f"--key-file={f(KEY_FILE)}",
        f"--trusted-ca-file={f(CA_FILE)}",
        "--client-cert-auth=true",
        f"--client-crl-file={f(CRL_FILE)}",
        f"--peer-cert-file={f(CERT_FILE)}",
        f"--peer-key-file={f(KEY_FILE)}",
        f"--peer-trusted-ca-file={f(CA_FILE)}",
        "--peer-client-cert-auth=true",
        f"--peer-crl-file={f(CRL_FILE)}",
        f"--peer-cert-allowed-hostname={PEER_HOST}",
    ]
