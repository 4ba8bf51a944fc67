"""How a node agent gets its certificates from the manager: joining with a join token,
renewing at half-life, and a certificate for each engine it starts.

The credentials directories (``security/tls.py``'s layout: tls.crt, tls.key, ca.crt,
ca.crl), under the node directory:

- ``tls/agent``: the agent's own (``agent/<node>``): it talks to the manager with it;
- ``tls/replica-server``: the replica server's (``replica/<node>``);
- ``tls/engines/<volume>``: one per engine (``engine/<volume>``).

Joining (``cargohold agent --join-token-file FILE``, only while ``tls/agent`` holds no
certificate): the agent makes its keys (they never leave the node) and certificate signing
requests, and sends them with the token to ``POST /api/v1/join``. The join file is the one
``cargohold node join-token create --output FILE`` writes: the token on its first line,
then the cluster's CA certificates (PEM), with which the agent checks it talks to the real
manager before it shows the token. From then on every request carries the agent's client
certificate. ``renew`` asks for new certificates (new keys) once one has less than half
its life left; ``engine_certificate`` gets one for ``engine/<volume>``, which the manager
signs only while that volume's engine is assigned to this node.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import ssl
from pathlib import Path
from typing import Any

import httpx

from cargohold.control.transport import async_client, error_from_response, unreachable
from cargohold.errors import (
    ConfigError,
    InvalidArgument,
    ManagerUnavailable,
    Unauthenticated,
)
from cargohold.security.ca import _SKEW as SKEW
from cargohold.security.ca import _write, key_pem, make_csr, new_key
from cargohold.security.identity import Identity, Role, from_peercert
from cargohold.security.tls import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE, Credentials

log = logging.getLogger("cargohold.agent")

RENEW_AT = 0.5  # of a certificate's life left: ask for a new one
PROPOSED_CLUSTER = "pending"  # the CSR's proposal only: the CA writes the real identity


def agent_dir(node_dir: str) -> Path:
    return Path(node_dir) / "tls" / "agent"


def replica_server_dir(node_dir: str) -> Path:
    return Path(node_dir) / "tls" / "replica-server"


def engine_dir(node_dir: str, volume: str) -> Path:
    return Path(node_dir) / "tls" / "engines" / volume


def enrolled(node_dir: str) -> bool:
    return (agent_dir(node_dir) / CERT_FILE).exists()


def read_join_file(path: str) -> tuple[str, bytes]:
    """(token, trust PEM) from a join file; ConfigError naming what is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the join token file {path}: {e}") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip().startswith("chk_"):
        raise ConfigError(f"{path} holds no join token (its first line should be chk_...)")
    trust = "\n".join(lines[1:]).strip()
    return lines[0].strip(), (trust + "\n").encode() if trust else b""


def _trust_context(trust: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the manager is known by the CA that signed it, not by name
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=trust.decode())
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"the join file's CA certificates do not load: {e}") from None
    return ctx


def _write_dir(where: Path, key: bytes | None, cert: str, trust: str, crl: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    os.chmod(where, 0o700)
    if key is not None:
        _write(where / KEY_FILE, key, private=True)
    _write(where / CA_FILE, trust.encode())
    _write(where / CRL_FILE, crl.encode())
    _write(where / CERT_FILE, cert.encode())  # last: a reloader that sees it sees the rest


def _csr(role: Role, name: str) -> tuple[bytes, str]:
    key = new_key()
    return key_pem(key), make_csr(Identity(PROPOSED_CLUSTER, role, name), key).decode()


def _peer_is_a_manager(r: httpx.Response, url: str) -> None:
    """An https answer came from a certificate of role ``manager`` (the CA alone does not
    say it: every node of the cluster holds a certificate of that CA)."""
    stream = r.extensions.get("network_stream")
    sslobj = stream.get_extra_info("ssl_object") if stream is not None else None
    if sslobj is None:
        return  # plain http: nothing to check (a plaintext manager, said loudly there)
    ident = from_peercert(sslobj.getpeercert())
    if ident is None or ident.role is not Role.MANAGER:
        raise Unauthenticated(f"{url} is not a cargohold manager (its certificate: {ident})")


async def _post(urls: list[str], path: str, body: dict[str, Any], verify: Any) -> Any:
    """POST to the first manager that answers (join: no client certificate yet), after
    making sure on the same connection that it is a manager: the token goes to no one else."""
    failures = []
    for url in urls:
        try:
            async with async_client(url, httpx.Timeout(10.0, connect=3.0), verify=verify) as c:
                _peer_is_a_manager(await c.get("/livez"), url)
                r = await c.post(path, json=body)
        except httpx.HTTPError as e:
            failures.append(str(unreachable(url, e)))
            continue
        if r.status_code >= 500:
            failures.append(f"{url}: HTTP {r.status_code}")
            continue
        if r.status_code >= 400:
            raise error_from_response(r, url)
        return r.json()
    raise ManagerUnavailable("no manager answered: " + "; ".join(failures))


def _fields(answer: Any, *names: str) -> dict[str, str]:
    """The answer's fields (strings), or InvalidArgument: never a KeyError's traceback."""
    if not isinstance(answer, dict) or not all(isinstance(answer.get(n), str) for n in names):
        raise InvalidArgument(f"the manager's answer lacks {', '.join(names)}: {str(answer)[:200]}")
    return {n: answer[n] for n in names}


def write_node_credentials(
    node_dir: str, keys: tuple[bytes, bytes], answer: dict[str, Any]
) -> None:
    a = _fields(answer, "cert", "replica_cert", "trust", "crl")
    _write_dir(replica_server_dir(node_dir), keys[1], a["replica_cert"], a["trust"], a["crl"])
    _write_dir(agent_dir(node_dir), keys[0], a["cert"], a["trust"], a["crl"])


async def join(
    urls: list[str],
    node: str,
    address: str,
    node_dir: str,
    join_file: str,
    hosts: list[str] | None = None,
) -> None:
    """Join the cluster with the join file's token; write both credentials directories.
    The certificates are valid for ``address`` and ``hosts`` (subjectAltNames)."""
    token, trust = read_join_file(join_file)
    https = any(u.startswith("https://") for u in urls)
    if https and not trust:
        raise ConfigError(
            f"{join_file} carries no CA certificates to check the manager with: make it "
            "with 'cargohold node join-token create --output FILE'"
        )
    verify: Any = _trust_context(trust) if trust else True
    agent_key, agent_csr = _csr(Role.AGENT, node)
    replica_key, replica_csr = _csr(Role.REPLICA, node)
    body = {
        "node": node,
        "address": address,
        "token": token,
        "csr": agent_csr,
        "replica_csr": replica_csr,
        "hosts": [h for h in hosts or [] if h and h != address],
    }
    answer = await _post(urls, "/api/v1/join", body, verify)
    write_node_credentials(node_dir, (agent_key, replica_key), answer)
    log.info(
        "node %s joined cluster %s; certificates in %s",
        node,
        answer.get("cluster"),
        agent_dir(node_dir),
    )


def credentials(node_dir: str) -> Credentials | None:
    """The agent's own credentials, once it has joined (None before)."""
    return Credentials.load(agent_dir(node_dir)) if enrolled(node_dir) else None


def due(cert: Path, at: float = RENEW_AT) -> bool:
    """Whether the certificate has ``at`` or less of its life left (or is unreadable)."""
    from cryptography import x509

    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return True
    start, end = c.not_valid_before_utc + SKEW, c.not_valid_after_utc  # its nominal life
    return end - dt.datetime.now(dt.UTC) <= (end - start) * at


async def renew(link: Any, node: str, node_dir: str, hosts: list[str] | None = None) -> bool:
    """New certificates for the agent and its replica server when due (-> whether renewed),
    valid for the node's registered address and ``hosts``. Both daemons follow their
    files (tls.py); ``link`` is the agent's ManagerLink."""
    if not enrolled(node_dir):
        return False
    if not (due(agent_dir(node_dir) / CERT_FILE) or due(replica_server_dir(node_dir) / CERT_FILE)):
        return False
    agent_key, agent_csr = _csr(Role.AGENT, node)
    replica_key, replica_csr = _csr(Role.REPLICA, node)
    answer = await link.post(
        f"/api/v1/nodes/{node}/certificates",
        {"csr": agent_csr, "replica_csr": replica_csr, "hosts": [h for h in hosts or [] if h]},
    )
    write_node_credentials(node_dir, (agent_key, replica_key), answer)
    log.info("node %s: certificates renewed (valid until %s)", node, answer.get("not_after"))
    return True


async def engine_certificate(link: Any, node: str, node_dir: str, volume: str) -> Path:
    """The credentials directory of ``volume``'s engine, with a certificate for
    ``engine/<volume>`` the manager signed (asked for again when due)."""
    where = engine_dir(node_dir, volume)
    if not due(where / CERT_FILE):
        return where
    key, csr = _csr(Role.ENGINE, volume)
    answer = await link.post(
        f"/api/v1/nodes/{node}/engine-certificates", {"volume": volume, "csr": csr}
    )
    a = _fields(answer, "cert", "trust", "crl")
    _write_dir(where, key, a["cert"], a["trust"], a["crl"])
    return where


def forget_engines(node_dir: str, keep: set[str]) -> None:
    """Delete the credentials of engines no longer assigned here (their keys too)."""
    root = Path(node_dir) / "tls" / "engines"
    for d in root.iterdir() if root.is_dir() else ():
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
            log.info("engine credentials of %s deleted: its engine left this node", d.name)
