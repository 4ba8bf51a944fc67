"""A test cluster CA and the credentials directories it issues (session-scoped fixture
``pki`` in tests/conftest.py): what tests give the replica servers and engines they start
(``ServerProc(..., tls_dir=pki.dir("replica", "node-1"))``)."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from cargohold.security import ca as ca_mod
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials

CLUSTER = "c-tests"


class PKI:
    """A CA under ``root``; ``dir(role, name)`` issues once and returns the directory."""

    def __init__(self, root: str | os.PathLike[str], cluster: str = CLUSTER) -> None:
        self.root = Path(root)
        self.cluster = cluster
        self.ca = CertificateAuthority.create(self.root / "ca", cluster)
        self._issued: dict[tuple[str, str, str], str] = {}

    def dir(self, role: str, name: str, tenant: str | None = None, tag: str = "") -> str:
        key = (role, name, tag)
        if key not in self._issued:
            where = self.root / f"{role}-{name}{'-' + tag if tag else ''}"
            self.ca.issue(Identity(self.cluster, Role(role), name, tenant)).write(where)
            self._issued[key] = str(where)
        return self._issued[key]

    def creds(self, role: str, name: str) -> Credentials:
        return Credentials.load(self.dir(role, name))

    def expired(self, role: str, name: str) -> Credentials:
        """A certificate of this CA that expired a day ago (issued three days back)."""
        real = ca_mod._now
        ca_mod._now = lambda: real() - dt.timedelta(days=3)
        try:
            return Credentials.load(self.dir(role, name, tag="expired"))
        finally:
            ca_mod._now = real


def new_pki(cluster: str = CLUSTER) -> PKI:
    return PKI(tempfile.mkdtemp(prefix="cargohold-pki-"), cluster)


def node_agent_credentials(cluster: object, node: str) -> Credentials | None:
    """What a test speaks to a local cluster's replica server with, as the node's agent
    would (``agent/<node>`` from ``cargohold up``): None for a ``--plaintext`` cluster."""
    from cargohold.launcher import credentials as launcher_creds

    if getattr(cluster, "plaintext", False):
        return None
    return Credentials.load(launcher_creds.agent_tls_dir(cluster.nodes[node].dir))  # type: ignore[attr-defined]
