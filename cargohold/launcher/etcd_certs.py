"""The local cluster's etcd credentials (``cargohold up --backend etcd``): etcd runs with
https and client-certificate authentication on both its ports, like in deploy/ha.

``issue(dir)`` opens the cluster's CA in ``DIR/ca`` (making it, for a new cluster id, the
first time: the first manager's ``--init`` then takes that id, so the CA and the state
store name the same cluster) and etcd's CA beside it (``DIR/ca/etcd``,
``cargohold.security.etcd``), and writes fresh certificates at every ``up``:

- ``DIR/etcd-tls/member``: etcd's (``--cert-file`` ... ``server_flags``)
- ``DIR/etcd-tls/client``: the managers' (``cargohold manager --etcd-tls-dir``)

They live ``LIFETIME``: a local cluster has nobody to renew them but the next ``up``.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

import httpx

from cargohold.control.identity import new_cluster_id
from cargohold.control.state import EtcdStateStore
from cargohold.errors import ConfigError
from cargohold.security import etcd as etcd_tls
from cargohold.security.ca import CertificateAuthority
from cargohold.security.tls import Credentials

CA_DIR = "ca"
TLS_DIR = "etcd-tls"
LIFETIME = dt.timedelta(days=30)
HOSTS = ("127.0.0.1", "localhost")  # etcd listens on loopback (in the managers' namespace)


def cluster_ca(dir: str) -> CertificateAuthority:
    """The cluster's CA in ``dir/ca`` (made for a new cluster id if there is none)."""
    path = Path(dir) / CA_DIR
    if (path / "cluster").exists():
        return CertificateAuthority.load(path)
    return CertificateAuthority.create(path, new_cluster_id())


def member_dir(dir: str) -> str:
    return os.path.join(dir, TLS_DIR, "member")


def client_dir(dir: str) -> str:
    return os.path.join(dir, TLS_DIR, "client")


def issue(dir: str) -> CertificateAuthority:
    """Write etcd's and the managers' credentials; the cluster's CA."""
    ca = cluster_ca(dir)
    eca = etcd_tls.etcd_ca(ca)
    etcd_tls.issue_member(eca, "cargohold", HOSTS, LIFETIME).write(member_dir(dir))
    etcd_tls.issue_client(eca, "local", LIFETIME).write(client_dir(dir))
    return ca


def health(dir: str, client_url: str, timeout: float = 1.0) -> str | None:
    """None when etcd answers /health over TLS with the managers' certificate, else why."""
    try:
        context: ssl.SSLContext = Credentials.load(client_dir(dir)).client_context()
        r = httpx.get(client_url + "/health", verify=context, timeout=timeout)
        if r.status_code == 200 and r.json().get("health") == "true":
            return None
        return f"HTTP {r.status_code}: {r.text[:200]}"
    except (httpx.HTTPError, ValueError, ConfigError) as e:
        return f"{type(e).__name__}: {e}"


def open_store(dir: str, client_url: str) -> EtcdStateStore:
    """A client of the cluster's etcd with the managers' certificate (tests and tools that
    read or rewrite the state behind the managers' backs)."""
    tls = Credentials.load(client_dir(dir)) if client_url.startswith("https://") else None
    return EtcdStateStore([client_url], tls=tls)
