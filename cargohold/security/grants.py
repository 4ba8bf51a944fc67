"""Read grants: the manager's signed word that the engine of volume W may read snapshot S
of volume V's replicas (a clone's copy; later a backup's read). Sans-I/O: bytes in,
a checked ``ReadGrant`` or an error out.

The manager makes one (``issue``) with its own key for each clone operation it hands an
agent; the agent passes it to the engine, whose importer sends it in OPEN and LIST
(``grant``); the replica server checks it (``verify``) against the CAs it trusts and then
``policy.grant_allows`` decides op by op. The format is documented in
docs/formats/replica-wire.md ("Read grants"):

    chg1.<payload>.<signature>.<signer>      (each part base64url without padding)

- ``payload``: JSON ``{"v": 1, "access": "read", "cluster", "engine", "volume",
  "snapshot", "nbf", "exp"}`` (times: Unix seconds);
- ``signature``: ECDSA P-256 with SHA-256 over the ASCII bytes ``chg1.<payload>``;
- ``signer``: the signing manager's certificate (DER), issued by a CA in the verifier's
  ``ca.crt``, of role ``manager`` and the verifier's cluster, valid now, not revoked.

``cryptography`` is imported only when a grant is made or checked (the engine never loads
it; the replica server only when a grant arrives).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from cargohold.errors import InvalidArgument, PermissionDenied
from cargohold.security.identity import Identity, Role, check_name, from_peercert

PREFIX = "chg1"
VERSION = 1
VERSIONS_READ = frozenset({1})
ACCESS_READ = "read"
DEFAULT_TTL = 3600.0  # seconds a grant is good for (an import opens within it)
MAX_GRANT_BYTES = 8192  # a grant longer than this is refused unread
_SKEW = 60  # seconds of clock difference tolerated at nbf


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """What a verified grant says: ``engine`` (the volume W whose engine may read) may
    read ``snapshot`` of ``volume`` (V) until ``not_after``; signed by ``signer``."""

    cluster: str
    engine: str
    volume: str
    snapshot: str
    not_before: float
    not_after: float
    signer: Identity | None = None

    def live(self, now: float) -> bool:
        return self.not_before - _SKEW <= now < self.not_after

    def __str__(self) -> str:
        return f"read grant for engine/{self.engine} on {self.volume}@{self.snapshot}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"read grant: its {what} is not base64url") from None


def issue(
    key_pem: bytes,
    cert_pem: bytes,
    cluster: str,
    engine: str,
    volume: str,
    snapshot: str,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """A grant for ``engine/<engine>`` to read ``snapshot`` of ``volume``, signed with the
    manager's key (``key_pem``; ``cert_pem`` its certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for what, value in (("engine", engine), ("volume", volume), ("snapshot", snapshot)):
        check_name(what, value)
    t = int(time.time() if now is None else now)
    payload = {
        "v": VERSION,
        "access": ACCESS_READ,
        "cluster": cluster,
        "engine": engine,
        "volume": volume,
        "snapshot": snapshot,
        "nbf": t,
        "exp": t + int(ttl),
    }
    head = f"{PREFIX}.{_b64(json.dumps(payload, sort_keys=True).encode())}"
    key = serialization.load_pem_private_key(key_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("read grants are signed with an EC key (the CA's kind)")
    sig = key.sign(head.encode(), ec.ECDSA(hashes.SHA256()))
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return f"{head}.{_b64(sig)}.{_b64(der)}"


def _payload(raw: bytes) -> dict[str, Any]:
    try:
        p = json.loads(raw)
    except ValueError:
        raise InvalidArgument("read grant: its payload is not JSON") from None
    if not isinstance(p, dict):
        raise InvalidArgument("read grant: its payload is not an object")
    if p.get("v") not in VERSIONS_READ:
        raise InvalidArgument(
            f"read grant: version {p.get('v')!r}, expected one of {sorted(VERSIONS_READ)}"
        )
    if p.get("access") != ACCESS_READ:
        raise InvalidArgument(f"read grant: access {p.get('access')!r}, expected 'read'")
    for f in ("cluster", "engine", "volume", "snapshot"):
        if not isinstance(p.get(f), str):
            raise InvalidArgument(f"read grant: {f} missing or not a string")
    for f in ("nbf", "exp"):
        if not isinstance(p.get(f), int) or isinstance(p.get(f), bool):
            raise InvalidArgument(f"read grant: {f} missing or not an integer")
    return p


def verify(
    token: Any, trust_pem: bytes, crl_pem: bytes | None, cluster: str, now: float | None = None
) -> ReadGrant:
    """The grant ``token`` checked: well formed (else InvalidArgument), signed by a manager
    certificate of ``cluster`` that a CA of ``trust_pem`` issued, valid now and not revoked,
    and not expired (else PermissionDenied, saying which)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(token, str) or len(token) > MAX_GRANT_BYTES:
        raise InvalidArgument(f"read grant must be a string of at most {MAX_GRANT_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise InvalidArgument(f"read grant: not {PREFIX}.<payload>.<signature>.<signer>")
    payload = _payload(_unb64(parts[1], "payload"))
    sig, der = _unb64(parts[2], "signature"), _unb64(parts[3], "signer")
    try:
        signer = x509.load_der_x509_certificate(der)
    except ValueError:
        raise InvalidArgument("read grant: its signer is not a certificate") from None
    t = time.time() if now is None else now
    # the signer: a manager of this cluster, issued by a CA we trust, valid, not revoked
    try:
        cas = x509.load_pem_x509_certificates(trust_pem)
    except ValueError:
        cas = []
    if not any(_issued_by(signer, ca) for ca in cas):
        raise PermissionDenied("read grant: signed by a certificate no trusted CA issued")
    if not signer.not_valid_before_utc.timestamp() <= t <= signer.not_valid_after_utc.timestamp():
        raise PermissionDenied("read grant: its signer's certificate is not valid now")
    if crl_pem and _revoked(signer, crl_pem):
        raise PermissionDenied("read grant: its signer's certificate is revoked")
    try:
        san = signer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    who = from_peercert({"subjectAltName": [("URI", u) for u in uris]})
    if who is None or who.role is not Role.MANAGER or who.cluster != cluster:
        raise PermissionDenied(
            f"read grant: signed by {who or 'no cargohold identity'}, not a manager of "
            f"cluster {cluster}"
        )
    pub = signer.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise PermissionDenied("read grant: its signer has no EC key")
    try:
        pub.verify(sig, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PermissionDenied("read grant: the signature does not match (forged?)") from None
    if payload["cluster"] != cluster:
        raise PermissionDenied(f"read grant: of cluster {payload['cluster']}, this is {cluster}")
    grant = ReadGrant(
        cluster=payload["cluster"],
        engine=payload["engine"],
        volume=payload["volume"],
        snapshot=payload["snapshot"],
        not_before=float(payload["nbf"]),
        not_after=float(payload["exp"]),
        signer=who,
    )
    if not grant.live(t):
        raise PermissionDenied(f"{grant}: expired (or not yet valid)")
    return grant


def _issued_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # ValueError, TypeError, InvalidSignature: not this CA
        return False
    return True


def _revoked(cert: Any, crl_pem: bytes) -> bool:
    from cryptography import x509

    blocks = crl_pem.split(b"-----END X509 CRL-----")
    for block in blocks:
        if b"-----BEGIN X509 CRL-----" not in block:
            continue
        try:
            crl = x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n")
        except ValueError:
            continue
        if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(
            cert.serial_number
        ):
            return True
    return False
