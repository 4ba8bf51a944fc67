"""Joining the cluster, node certificates, node and disk removal (``Service``'s part).

- Join tokens (``/join-tokens/<id>``, ``JoinToken``): made by an admin, stored as the
  SHA-256 of the token (``security/tokens.py``), good for ``uses`` joins until ``expires_at``.
- ``join``: a new agent sends its node name, address, the token and two certificate
  signing requests; the manager's CA (``--ca-dir``) signs them as ``agent/<node>`` and
  ``replica/<node>``, valid for the node's address and the other names the agent gives
  (``hosts``: e.g. its metrics address) as subjectAltNames (IP or DNS), so that clients
  that check hostnames (Prometheus scraping the agent's ``/metrics``) verify the node. A name whose node has a live agent is refused (409); a node that is
  down (a reinstall) may join again with a token: its old certificates are revoked.
- ``renew``: ``agent/<node>`` (and only it) gets new certificates for the same keys' roles,
  valid for the node's registered address and the ``hosts`` it gives;
  ``engine_certificate``: it gets ``engine/<volume>`` only for a volume whose engine the
  manager assigned to that node.
- Every serial issued to a node is kept (``/node-certificates/<node>``) so that removing
  the node revokes them all; the manager copies the new CRL into its own credentials
  directory, so its TLS server refuses them within a second.
- Disks: a new disk's path must lie under the allowed roots (``disk_roots.py``); a disk is
  drained (its replicas rebuilt elsewhere, as a node drain does) and removed when empty.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from pydantic import BaseModel, Field, StrictInt

from cargohold.control.model import Disk, Node, Record, Replica, check_name, keys, name_field
from cargohold.control.repository import now
from cargohold.control.service_base import ServiceBase
from cargohold.control.state.base import Compare, Delete, Put
from cargohold.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    WrongState,
)
from cargohold.security import tokens
from cargohold.security.ca import CertificateAuthority, Issued, _write
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import CRL_FILE

log = logging.getLogger("cargohold.manager")

JOIN_TOKENS = "/join-tokens/"
NODE_CERTIFICATES = "/node-certificates/"
MAX_CSR = 16 << 10  # a P-256 CSR in PEM is about 500 bytes
MAX_HOSTS = 8  # names a node certificate is valid for, besides the node's address
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def san_hosts(address: str, names: list[str]) -> list[str]:
    """The node's ``address`` and ``names`` as subjectAltName hosts: each an IP address or
    a DNS name (no wildcard), duplicates dropped, order kept. InvalidArgument names a bad
    one of ``names``; an ``address`` that is neither is left out (it is the node's own
    business where it listens, and a certificate can name only hosts)."""
    try:
        out = _hosts([address])
    except InvalidArgument:
        out = []
    return out + [h for h in _hosts(names) if h not in out]


def _hosts(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        name = name.strip()
        try:
            host = str(ipaddress.ip_address(name))
        except ValueError:
            labels = name.rstrip(".").split(".")
            if len(name) > 253 or not all(_DNS_LABEL.match(x) for x in labels):
                raise InvalidArgument(
                    f"{name[:80]!r} is neither an IP address nor a DNS name: a node's "
                    "certificate can name only those"
                ) from None
            host = name.rstrip(".").lower()
        if host not in out:
            out.append(host)
    return out


class JoinToken(Record):
    id: str
    digest: str  # SHA-256 of the whole token: the token itself is never stored
    created_at: float
    expires_at: float
    uses_left: int = Field(ge=0)
    created_by: str = ""


class IssuedCert(Record):
    serial: str
    identity: str
    not_after: float


class NodeCertificates(Record):
    node: str
    issued: list[IssuedCert] = Field(default_factory=list)


# --- request and answer bodies --------------------------------------------------------------
class JoinTokenCreate(BaseModel):
    model_config = {"extra": "forbid"}

    ttl_seconds: StrictInt = Field(default=3600, gt=0, le=30 * 86400)
    uses: StrictInt = Field(default=1, ge=1, le=10000)


class JoinTokenView(BaseModel):
    id: str
    expires_at: float
    uses_left: int
    created_by: str = ""


class NewJoinToken(JoinTokenView):
    token: str = Field(description="shown once: the manager keeps only its digest")
    ca_sha256: str = Field(description="SHA-256 of the trust bundle: pin it when joining")
    trust: str = Field(description="the CAs a joining agent checks the manager against (PEM)")


class JoinRequest(BaseModel):
    model_config = {"extra": "forbid"}

    node: str = name_field()
    address: str = Field(min_length=1, max_length=253)
    token: str = Field(min_length=1, max_length=200)
    csr: str = Field(max_length=MAX_CSR, description="the agent's CSR (PEM)")
    replica_csr: str = Field(max_length=MAX_CSR, description="the replica server's CSR (PEM)")
    hosts: list[str] = Field(
        default_factory=list,
        max_length=MAX_HOSTS,
        description="IP addresses or DNS names the certificates are valid for besides "
        "address (e.g. the agent's metrics address)",
    )


class RenewRequest(BaseModel):
    model_config = {"extra": "forbid"}

    csr: str = Field(max_length=MAX_CSR, description="the agent's CSR (PEM)")
    replica_csr: str = Field(max_length=MAX_CSR, description="the replica server's CSR (PEM)")
    hosts: list[str] = Field(
        default_factory=list,
        max_length=MAX_HOSTS,
        description="IP addresses or DNS names the certificates are valid for besides the "
        "node's registered address",
    )


class EngineCertificateRequest(BaseModel):
    model_config = {"extra": "forbid"}

    volume: str = name_field()
    csr: str = Field(
        max_length=MAX_CSR, description="the engine's CSR (PEM); a malformed one is a 400"
    )


class NodeCredentialsView(BaseModel):
    cluster: str
    cert: str = Field(description="the agent's certificate (PEM)")
    replica_cert: str = Field(description="the replica server's certificate (PEM)")
    trust: str = Field(description="the CAs to trust (PEM bundle)")
    crl: str = Field(description="the CAs' revocation lists (PEM)")
    not_after: float


class NodeRemoved(BaseModel):
    node: str
    revoked_certificates: int = Field(description="certificates of the node now revoked")


class EngineCredentialsView(BaseModel):
    cluster: str
    cert: str
    trust: str
    crl: str
    not_after: float


def trust_sha256(trust_pem: bytes) -> str:
    return hashlib.sha256(trust_pem).hexdigest()


class EnrollmentCalls(ServiceBase):
    """Joining, renewal, engine certificates, node removal and disk changes."""

    ca: CertificateAuthority | None = None  # the manager's CA (--ca-dir)
    tls_dir: Path | None = None  # the manager's own credentials directory (its CRL is kept fresh)
    plaintext: bool = True  # the API runs without TLS (control/auth.py)

    def _ca(self) -> CertificateAuthority:
        if self.ca is None:
            raise WrongState(
                "this manager holds no certificate authority: start it with --ca-dir "
                "(docs/security.md, 'Joining the cluster')"
            )
        return self.ca

    # --- join tokens ------------------------------------------------------------------------
    async def create_join_token(self, req: JoinTokenCreate, by: str) -> dict[str, Any]:
        ca = self._ca()
        new = tokens.new_token()
        t = now()
        rec = JoinToken(
            id=new.id,
            digest=new.digest,
            created_at=t,
            expires_at=t + req.ttl_seconds,
            uses_left=req.uses,
            created_by=by,
        )
        await self.repo._create(JOIN_TOKENS + new.id, rec, f"join token {new.id}")
        log.info("join token %s made by %s (%d uses, %d s)", new.id, by, req.uses, req.ttl_seconds)
        trust = ca.trust_pem()
        return {
            **JoinTokenView(**rec.model_dump(exclude={"digest", "created_at"})).model_dump(),
            "token": new.token,
            "ca_sha256": trust_sha256(trust),
            "trust": trust.decode(),
        }

    async def join_tokens(self) -> list[dict[str, Any]]:
        recs = await self.repo._list(JOIN_TOKENS, JoinToken)
        return [
            JoinTokenView(**r.model_dump(exclude={"digest", "created_at"})).model_dump()
            for r in recs
        ]

    async def delete_join_token(self, tid: str) -> dict[str, Any]:
        got = await self.repo._get(JOIN_TOKENS + tid, JoinToken)
        if got is None or not await self.repo.store.delete(JOIN_TOKENS + tid):
            raise NotFound(f"join token {tid} not found")
        return JoinTokenView(**got[0].model_dump(exclude={"digest", "created_at"})).model_dump()

    async def _use_token(self, token: str) -> JoinToken:
        """Take one use of a valid join token (atomically); Unauthenticated otherwise."""
        tid = tokens.token_id(token)
        key = JOIN_TOKENS + tid
        for _ in range(64):
            got = await self.repo._get(key, JoinToken)
            if got is None or not tokens.matches(token, got[0].digest):
                raise Unauthenticated("unknown join token (never made, used up or deleted)")
            rec, rev = got
            if rec.expires_at <= now():
                raise Unauthenticated(f"join token {tid} has expired")
            if rec.uses_left <= 0:
                raise Unauthenticated(f"join token {tid} is used up")
            left = rec.uses_left - 1
            op = (
                Delete(key)
                if left == 0
                else Put(key, rec.model_copy(update={"uses_left": left}).model_dump_json().encode())
            )
            if await self.repo.store.txn([Compare(key, rev)], [op]):
                return rec
        raise Unauthenticated(f"join token {tid}: too many joins at once, try again")

    # --- certificates -----------------------------------------------------------------------
    def _sign(self, csr: str, ident: Identity, hosts: list[str] | None = None) -> Issued:
        life = dt.timedelta(seconds=self.settings.certificate_lifetime)
        ca = self._ca()
        try:
            return ca.sign_csr(csr.encode(), ident, hosts=hosts or (), lifetime=life)
        except (UnsupportedAlgorithm, ValueError, TypeError) as e:  # odd keys or signatures
            raise InvalidArgument(f"the certificate signing request cannot be used: {e}") from None

    async def _record(self, node: str, issued: list[tuple[Identity, Issued]]) -> None:
        key = NODE_CERTIFICATES + node
        t = now()
        for _ in range(64):
            got = await self.repo._get(key, NodeCertificates)
            old, rev = got if got else (NodeCertificates(node=node), 0)
            keep = [c for c in old.issued if c.not_after > t]  # expired ones need no revoking
            keep += [
                IssuedCert(
                    serial=str(i.serial), identity=ident.uri, not_after=i.not_after.timestamp()
                )
                for ident, i in issued
            ]
            new = NodeCertificates(node=node, issued=keep)
            if await self.repo.store.txn(
                [Compare(key, rev)], [Put(key, new.model_dump_json().encode())]
            ):
                return
        raise WrongState(f"node {node}: too many certificate requests at once, try again")

    async def _revoke_node(self, node: str, reason: str) -> int:
        """Revoke every certificate issued to ``node`` that has not expired; forget them."""
        got = await self.repo._get(NODE_CERTIFICATES + node, NodeCertificates)
        if got is None:
            return 0
        ca = self._ca()
        t = now()
        live = [c for c in got[0].issued if c.not_after > t]
        for c in live:
            ca.revoke(int(c.serial), reason)
        await self.repo.store.delete(NODE_CERTIFICATES + node)
        self._publish_crl()
        log.warning("node %s: %d certificates revoked (%s)", node, len(live), reason)
        return len(live)

    def _publish_crl(self) -> None:
        """Our own TLS server checks clients against the CA's newest CRL (tls.py reloads)."""
        if self.ca is not None and self.tls_dir is not None:
            _write(self.tls_dir / CRL_FILE, self.ca.crl_pem())

    def _node_answer(self, agent: Issued, replica: Issued) -> dict[str, Any]:
        ca = self._ca()
        return NodeCredentialsView(
            cluster=ca.cluster,
            cert=agent.cert.decode(),
            replica_cert=replica.cert.decode(),
            trust=ca.trust_pem().decode(),
            crl=ca.crl_pem().decode(),
            not_after=min(agent.not_after, replica.not_after).timestamp(),
        ).model_dump()

    def _live(self, node: Node) -> bool:
        return node.down_since is None and now() - node.heartbeat_at < self.settings.node_down_after

    async def join(self, req: JoinRequest) -> dict[str, Any]:
        ca = self._ca()
        check_name(req.node, "node name")
        try:
            old: Node | None = await self.repo.node(req.node)
        except NotFound:
            old = None
        if old is not None and self._live(old):
            raise AlreadyExists(
                f"node {req.node} is up with a live agent: a second agent may not join under "
                "its name (remove the node, or wait until it is down, to re-join it)"
            )
        agent_id = Identity(ca.cluster, Role.AGENT, req.node)
        replica_id = Identity(ca.cluster, Role.REPLICA, req.node)
        hosts = san_hosts(req.address, req.hosts)
        # bad CSRs and names are refused before a use is taken
        agent = self._sign(req.csr, agent_id, hosts)
        replica = self._sign(req.replica_csr, replica_id, hosts)
        tok = await self._use_token(req.token)
        if old is not None:  # a reinstalled node: its old keys are gone, so are their certificates
            await self._revoke_node(req.node, f"node {req.node} joined again")
        await self._record(req.node, [(agent_id, agent), (replica_id, replica)])
        log.info("node %s joined with join token %s (address %s)", req.node, tok.id, req.address)
        return self._node_answer(agent, replica)

    async def renew(self, node: str, req: RenewRequest) -> dict[str, Any]:
        ca = self._ca()
        known = await self.repo.node(node)  # a removed node gets nothing (NotFound)
        agent_id = Identity(ca.cluster, Role.AGENT, node)
        replica_id = Identity(ca.cluster, Role.REPLICA, node)
        hosts = san_hosts(known.address, req.hosts)
        agent = self._sign(req.csr, agent_id, hosts)
        replica = self._sign(req.replica_csr, replica_id, hosts)
        await self._record(node, [(agent_id, agent), (replica_id, replica)])
        log.info("node %s renewed its certificates", node)
        return self._node_answer(agent, replica)

    async def engine_certificate(self, node: str, req: EngineCertificateRequest) -> dict[str, Any]:
        ca = self._ca()
        await self.repo.node(node)
        try:
            vol = await self.repo.volume(req.volume)
        except NotFound:
            vol = None
        if vol is None or vol.engine is None or vol.engine.node != node:
            raise PermissionDenied(
                f"the engine of volume {req.volume} is not assigned to node {node}: "
                "no certificate for it"
            )
        ident = Identity(ca.cluster, Role.ENGINE, req.volume)
        issued = self._sign(req.csr, ident)
        await self._record(node, [(ident, issued)])
        return EngineCredentialsView(
            cluster=ca.cluster,
            cert=issued.cert.decode(),
            trust=ca.trust_pem().decode(),
            crl=ca.crl_pem().decode(),
            not_after=issued.not_after.timestamp(),
        ).model_dump()

    # --- removing nodes ---------------------------------------------------------------------
    async def remove_node(self, name: str) -> dict[str, Any]:
        """Forget a node and revoke its certificates; refused while replicas or an engine
        are on it (drain it first)."""
        try:
            await self.repo.node(name)
        except NotFound:  # joined and never registered: its certificates still go
            if await self.repo.store.get(NODE_CERTIFICATES + name) is None:
                raise
        reps = [r for r in await self.repo.replicas() if r.node == name]
        if reps:
            raise WrongState(
                f"node {name} still holds {len(reps)} replicas: drain it first "
                f"(cargohold node drain {name})"
            )
        engines = [v.name for v in await self.repo.volumes() if v.engine and v.engine.node == name]
        if engines:
            raise WrongState(
                f"node {name} runs the engines of {', '.join(engines)}: detach them first"
            )
        revoked = await self._revoke_node(name, f"node {name} removed") if self.ca else 0
        for d in await self.repo.disks(name):
            await self.repo.store.delete(keys.disk(name, d.name))
        await self.repo.store.delete(keys.node(name))
        self.repo._forget(keys.node(name))
        log.warning("node %s removed (%d certificates revoked)", name, revoked)
        self.kick.set()
        return {"node": name, "revoked_certificates": revoked}

    # --- disks ------------------------------------------------------------------------------
    async def _disk(self, node: str, disk: str) -> Disk:
        for d in await self.repo.disks(node):
            if d.name == disk:
                return d
        await self.repo.node(node)
        raise NotFound(f"disk {disk} not found on node {node}")

    def _on_disk(self, reps: list[Replica], node: str, disk: str) -> list[Replica]:
        return [r for r in reps if r.node == node and r.disk == disk]

    async def drain_disk(self, node: str, disk: str) -> dict[str, Any]:
        """No new replicas on the disk, and every replica on it is rebuilt elsewhere (as a
        node drain does: the new one first, then the old one goes)."""
        d = await self._disk(node, disk)
        if d.schedulable:
            await self.repo.put_disk(d.model_copy(update={"schedulable": False}))
        for rep in self._on_disk(await self.repo.replicas(), node, disk):
            if not rep.deleting and not rep.evicting:

                def evict(r: Replica) -> Replica:
                    r.evicting = True
                    return r

                await self.repo.update_replica(rep.volume, rep.id, evict)
        self.kick.set()
        return (await self._disk(node, disk)).model_dump()

    async def remove_disk(self, node: str, disk: str) -> dict[str, Any]:
        d = await self._disk(node, disk)
        reps = self._on_disk(await self.repo.replicas(), node, disk)
        if reps:
            raise WrongState(
                f"disk {disk} on node {node} still holds {len(reps)} replicas "
                f"({', '.join(sorted(r.id for r in reps)[:5])}): drain it first "
                f"(cargohold disk drain {node} {disk}) and wait until it is empty"
            )
        await self.repo.store.delete(keys.disk(node, disk))
        log.info("disk %s removed from node %s", disk, node)
        self.kick.set()
        return d.model_dump()
