"""The local cluster's CA and the certificates ``cargohold up`` hands out (issue #16).

At every ``up`` the launcher opens (or, the first time, creates) the cluster's CA in
``DIR/ca`` and issues fresh certificates (24 hours; a restart renews them):

    DIR/ca/                         the CA (security/ca.py; its key never leaves it)
    DIR/managers/<id>/              manager/<id>: the manager's --tls-dir
    DIR/tls/                        admin/local-admin: the CLI's certificate
    DIR/token                       the first admin token (written by the manager at --init)
    DIR/nodes/<node>/tls/agent/     agent/<node>: the agent's ($CARGOHOLD_TLS_DIR)
    DIR/nodes/<node>/tls/replica/   replica/<node>: the node's replica server's

Every directory is a credentials directory (tls.crt, tls.key, ca.crt, ca.crl). The
cluster id the CA signs for is the state store's: the first manager starts with
``--init --cluster-id`` of the CA's id.
"""

from __future__ import annotations

import os
from pathlib import Path

from cargohold.control.identity import new_cluster_id
from cargohold.control.transport import ClientCredentials
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role

ADMIN_NAME = "local-admin"


def ca_dir(dir: str) -> Path:
    return Path(dir) / "ca"


def manager_tls_dir(dir: str, manager_id: str) -> Path:
    return Path(dir) / "managers" / manager_id


def admin_tls_dir(dir: str) -> Path:
    return Path(dir) / "tls"


PROMETHEUS_NAME = "prometheus"


def prometheus_tls_dir(dir: str) -> Path:
    """reader/prometheus: the client certificate of the scrape config (monitoring.py)."""
    return Path(dir) / "prometheus" / "tls"


def token_file(dir: str) -> Path:
    return Path(dir) / "token"


def agent_tls_dir(node_dir: str) -> Path:
    return Path(node_dir) / "tls" / "agent"


def replica_tls_dir(node_dir: str) -> Path:
    return Path(node_dir) / "tls" / "replica"


def cluster_id(dir: str) -> str:
    """The id the cluster's CA signs for (a new one before the first ``up``)."""
    try:
        return (ca_dir(dir) / "cluster").read_text().strip()
    except FileNotFoundError:
        return new_cluster_id()


def client_credentials(dir: str) -> ClientCredentials:
    """The launcher's own credentials for the cluster in ``dir``: the admin certificate,
    and the admin token (the unix socket takes only tokens) once the manager wrote it."""
    token = token_file(dir)
    return ClientCredentials(admin_tls_dir(dir), token if token.exists() else None)


def issue(
    dir: str,
    cluster: str,
    managers: list[tuple[str, str]],
    nodes: list[tuple[str, str, str]],
) -> CertificateAuthority:
    """Issue every certificate of the table above. ``managers``: (id, listen host);
    ``nodes``: (name, address, node directory)."""
    ca = CertificateAuthority.open_or_create(ca_dir(dir), cluster)
    for mid, host in managers:
        ca.issue(Identity(cluster, Role.MANAGER, mid), hosts=[host]).write(
            manager_tls_dir(dir, mid)
        )
    ca.issue(Identity(cluster, Role.ADMIN, ADMIN_NAME)).write(admin_tls_dir(dir))
    # what the cluster's Prometheus scrapes with: metrics:read and nothing to change
    ca.issue(Identity(cluster, Role.READER, PROMETHEUS_NAME)).write(prometheus_tls_dir(dir))
    for name, address, node_dir in nodes:
        ca.issue(Identity(cluster, Role.AGENT, name)).write(agent_tls_dir(node_dir))
        ca.issue(Identity(cluster, Role.REPLICA, name), hosts=[address]).write(
            replica_tls_dir(node_dir)
        )
    for d in (Path(dir) / "managers", Path(dir) / "tls"):
        os.chmod(d, 0o700)
    return ca
