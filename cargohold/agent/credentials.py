"""The TLS credentials a node agent hands its children, and uses itself towards them.

Three credentials directories per node (``tls.py``'s layout: tls.crt, tls.key, ca.crt,
ca.crl):

- the replica server's (role ``replica``, name the node): passed as its ``--tls-dir``;
- the agent's own (role ``agent``, name the node): what it connects to its replica server
  with (LIST, CREATE, DELETE, probes);
- one per engine (role ``engine``, name the volume): passed as the engine's ``--tls-dir``;
  with it the engine may open that volume's replicas and no other.

Where they come from, in this order:

- ``--ca-dir`` (local clusters: ``cargohold up`` keeps the cluster CA beside the nodes): the
  agent issues all three itself, under ``<node dir>/tls/``, and issues again when one has
  less than half its life left;
- an agent that joined with a join token (``enrollment.py``): the manager signed them;
  ``tls/agent``, ``tls/replica-server`` and ``tls/engines/<volume>``, which the agent asks
  the manager for before it starts that engine (``Agent._engine_certificates``);
- ``--tls-dir`` / ``--replica-tls-dir``: directories made elsewhere.

With none of them the children run ``--plaintext`` (loudly).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cargohold.agent import enrollment
from cargohold.errors import ConfigError
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import CERT_FILE, Credentials, warn_plaintext

log = logging.getLogger("cargohold.agent")

RENEW_AT = 0.5  # of a certificate's life left: issue a new one


@dataclass
class NodeCredentials:
    """``node``'s credentials under ``dir`` (the node directory). ``ca_dir``: a CA to issue
    from; ``tls_dir`` / ``replica_tls_dir``: directories made elsewhere (the agent's and
    its replica server's) when there is no CA at hand."""

    node: str
    dir: str
    ca_dir: str | None = None
    tls_dir: str | None = None
    replica_tls_dir: str | None = None
    joins: bool = False  # --join-token-file: the manager signs them once the agent joined

    def __post_init__(self) -> None:
        self._client: Credentials | None = None
        if self.plaintext and not self.joins:
            warn_plaintext(f"node {self.node}'s replica server and engines")

    @property
    def plaintext(self) -> bool:
        """The data path runs without TLS: no CA to issue from, no replica server
        credentials and no certificates from joining. (``tls_dir`` alone is the agent's
        certificate towards the manager; it does not make engines' certificates.)"""
        return not (self.ca_dir or self.replica_tls_dir or self.enrolled)

    @property
    def enrolled(self) -> bool:
        """The agent joined: the manager signed its and its replica server's certificates."""
        return (enrollment.replica_server_dir(self.dir) / CERT_FILE).exists()

    @property
    def root(self) -> Path:
        return Path(self.dir) / "tls"

    def _issue(self, ident: Identity, where: Path) -> str:
        """``where`` holds a certificate for ``ident`` with at least half its life left
        (issued now from the CA when not)."""
        if _fresh(where / CERT_FILE):
            return str(where)
        assert self.ca_dir is not None
        from cargohold.security.ca import CertificateAuthority

        ca = CertificateAuthority.load(self.ca_dir)
        if ident.cluster != ca.cluster:  # a placeholder cluster: the CA's own
            ident = Identity(ca.cluster, ident.role, ident.name, ident.tenant)
        ca.issue(ident).write(where)
        os.chmod(where, 0o700)
        log.info("issued %s a certificate in %s", ident, where)
        return str(where)

    def _mine(self, role: Role, name: str, sub: str) -> str:
        return self._issue(Identity("local", role, name), self.root / sub)

    def renew(self) -> None:
        """Issue again what has less than half its life left (with ``--ca-dir``; every
        heartbeat): the children's credentials follow their files, no restart."""
        if not self.ca_dir:
            return
        self.replica_server_dir()
        self.client()
        engines = self.root / "engines"
        for volume in sorted(os.listdir(engines)) if engines.is_dir() else ():
            engine_credentials(self, volume)

    def replica_server_dir(self) -> str | None:
        """The replica server's credentials directory (None: plaintext)."""
        if self.plaintext:
            return None
        if self.ca_dir:
            return self._mine(Role.REPLICA, self.node, "replica-server")
        if not self.replica_tls_dir and self.enrolled:
            return str(enrollment.replica_server_dir(self.dir))
        if not self.replica_tls_dir:
            raise ConfigError(
                "the replica server needs credentials: give the agent --replica-tls-dir "
                "(or --ca-dir to issue them here)"
            )
        return self.replica_tls_dir

    def metrics_dir(self, hosts: list[str]) -> str | None:
        """The credentials the node's metrics listener serves with (None: plaintext). With
        the CA at hand a certificate of its own, valid for ``hosts`` (Prometheus checks
        the address it scrapes); else the agent's own (docs/observability.md)."""
        if self.plaintext:
            return None
        if self.ca_dir:
            where = self.root / "metrics"
            if not _fresh(where / CERT_FILE):
                from cargohold.security.ca import CertificateAuthority

                ca = CertificateAuthority.load(self.ca_dir)
                ca.issue(Identity(ca.cluster, Role.AGENT, self.node), hosts=hosts).write(where)
                os.chmod(where, 0o700)
            return str(where)
        client = self.client()
        return str(client.directory) if client is not None else None

    def client(self) -> Credentials | None:
        """What the agent connects to its replica server with (None: plaintext)."""
        if self.plaintext:
            return None
        directory: str | None
        if self.ca_dir:
            directory = self._mine(Role.AGENT, self.node, "agent")
        elif self.enrolled and not self.tls_dir:
            directory = str(enrollment.agent_dir(self.dir))
        else:
            directory = self.tls_dir
        if directory is None:
            raise ConfigError(
                f"node {self.node}: the agent has no certificate to reach its replica server "
                "with: give it --tls-dir (or --ca-dir, or join with --join-token-file)"
            )
        if self._client is None or str(self._client.directory) != directory:
            self._client = Credentials.load(directory)
        return self._client


def engine_credentials(creds: NodeCredentials, volume: str) -> str | None:
    """The credentials directory of ``volume``'s engine on this node (role engine, name the
    volume), or None when engines run plaintext: issued from the agent's ``--ca-dir``, else
    the one the manager signed for a joined agent (``enrollment.engine_certificate``, asked
    for before the engine starts)."""
    if creds.plaintext:
        return None
    if creds.ca_dir:
        return creds._mine(Role.ENGINE, volume, os.path.join("engines", volume))
    where = enrollment.engine_dir(creds.dir, volume)
    if (where / CERT_FILE).exists():
        return str(where)
    raise ConfigError(
        f"cannot give the engine of {volume} a certificate: the agent has no --ca-dir to "
        "issue it from and the manager has not signed one for it yet "
        f"(expected in {where}; the agent asks again next heartbeat)"
    )


def _fresh(cert: Path) -> bool:
    """A certificate with more than RENEW_AT of its life left."""
    try:
        pem = cert.read_bytes()
    except OSError:
        return False
    from cryptography import x509

    try:
        c = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return False
    start, end = c.not_valid_before_utc, c.not_valid_after_utc
    left = end - dt.datetime.now(dt.UTC)
    return left > (end - start) * RENEW_AT
