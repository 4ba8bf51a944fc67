"""The cluster's certificate authority: one per cluster, kept by the manager.

A CA directory holds (docs/security.md, "The CA directory"):

- ``ca.crt`` / ``ca.key``: the CA that signs now (ECDSA P-256; the key is mode 0600)
- ``trust.crt``: every CA certificate peers accept — the signer, plus during a rotation
  the staged next CA (``next.crt``/``next.key``) or the retiring previous one
  (``prev.crt``/``prev.key``), so that certificates of both generations work while they
  overlap (``stage`` → ``promote`` → ``retire``)
- ``ca.crl``: the certificate revocation list of each trusted CA (always present, maybe
  empty): servers check every client certificate against it
- ``revoked.json``: what was revoked and why (the CRL is made from it)

Leaf certificates are short-lived (``DEFAULT_LIFETIME``) and carry one identity URI
(``identity.py``); a component renews its certificate long before it expires, so a node
that is removed from the cluster loses access when its certificate runs out even where a
CRL has not reached yet. Keys never leave the component that made them when it asks with
a certificate signing request (``sign_csr``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cargohold import durable
from cargohold.errors import ConfigError, InvalidArgument
from cargohold.security.identity import Identity, check_name
from cargohold.security.tls import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE

DEFAULT_LIFETIME = dt.timedelta(hours=24)
CA_LIFETIME = dt.timedelta(days=3650)
_SKEW = dt.timedelta(minutes=5)  # back-date: clocks of nodes differ a little


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically (a reader sees the old file or the new one, never half)."""
    durable.write_atomic(path, data, 0o600 if private else 0o644)


def make_csr(identity: Identity, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A certificate signing request; the CA decides the identity, this only proposes it."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity))]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    key: bytes | None  # PEM; None when the requester kept its key (a CSR)
    cert: bytes  # PEM
    trust: bytes  # PEM bundle of the trusted CAs
    crl: bytes  # PEM CRLs of the trusted CAs
    serial: int
    not_after: dt.datetime

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write as a credentials directory (``tls.py``): ca.crt, tls.crt, tls.key, ca.crl."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.key is not None:
            _write(d / KEY_FILE, self.key, private=True)
        _write(d / CA_FILE, self.trust)
        _write(d / CRL_FILE, self.crl)
        _write(d / CERT_FILE, self.cert)  # last: a reloader that sees it sees the rest
        return d


class CertificateAuthority:
    """One CA directory. ``create`` makes it; ``load`` opens it; ``issue`` and ``sign_csr``
    make leaf certificates; ``stage``, ``promote`` and ``retire`` rotate the CA;
    ``revoke`` adds a certificate to the CRL."""

    def __init__(self, directory: Path, cluster: str) -> None:
        self.dir = directory
        self.cluster = cluster
        self._stamp: tuple[int, ...] = ()
        self._follow(strict=True)

    def _follow(self, strict: bool = False) -> None:
        """Read ``ca.crt`` and ``ca.key`` again when they changed on disk: a long-lived
        holder (the manager) keeps signing with the CA that signs *now* after
        ``cargohold ca rotate promote`` ran in another process, and its CRLs name the CAs
        trusted now. A pair caught half-written (a key that does not match the certificate)
        is not taken: the old one serves until the next call. ``strict``: at load, every
        problem is a ConfigError."""
        crt, key = self.dir / "ca.crt", self.dir / "ca.key"
        try:
            stamp = (crt.stat().st_mtime_ns, key.stat().st_mtime_ns)
            if stamp == self._stamp:
                return
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            loaded = serialization.load_pem_private_key(key.read_bytes(), None)
        except (OSError, ValueError) as e:
            if strict:
                raise ConfigError(f"cannot read the CA in {self.dir}: {e}") from None
            return
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            if strict:
                raise ConfigError(f"{self.dir}/ca.key is not an ECDSA key")
            return
        if _public(loaded.public_key()) != _public(cert.public_key()):
            if strict:
                raise ConfigError(f"{self.dir}/ca.key is not the key of {self.dir}/ca.crt")
            return
        self.cert, self.key, self._stamp = cert, loaded, stamp

    # --- making and opening ---------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike[str], cluster: str) -> CertificateAuthority:
        d = Path(directory)
        check_name("cluster id", cluster)
        if (d / "ca.key").exists():
            raise ConfigError(f"{d} already holds a CA (ca.key); refusing to replace it")
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        key = new_key()
        cert = _ca_cert(key, cluster)
        _write(d / "ca.key", key_pem(key), private=True)
        _write(d / "ca.crt", cert_pem(cert))
        _write(d / "trust.crt", cert_pem(cert))
        _write(d / "cluster", cluster.encode())
        ca = cls(d, cluster)
        ca._write_crl()
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        d = Path(directory)
        try:
            cluster = (d / "cluster").read_text().strip()
        except OSError as e:
            raise ConfigError(f"{d} is not a cargohold CA directory: {e}") from None
        return cls(d, cluster)

    @classmethod
    def open_or_create(
        cls, directory: str | os.PathLike[str], cluster: str
    ) -> CertificateAuthority:
        d = Path(directory)
        if (d / "ca.key").exists():
            ca = cls.load(d)
            if ca.cluster != cluster:
                raise ConfigError(f"the CA in {d} belongs to cluster {ca.cluster}, not {cluster}")
            return ca
        return cls.create(d, cluster)

    # --- what peers trust -----------------------------------------------------------------

    def trust_pem(self) -> bytes:
        return (self.dir / "trust.crt").read_bytes()

    def crl_pem(self) -> bytes:
        return (self.dir / "ca.crl").read_bytes()

    def _trusted(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.trust_pem())

    # --- issuing --------------------------------------------------------------------------

    def issue(
        self,
        identity: Identity,
        hosts: list[str] | tuple[str, ...] = (),
        lifetime: dt.timedelta = DEFAULT_LIFETIME,
    ) -> Issued:
        """A new key and a certificate for ``identity``, valid for ``hosts`` (DNS names or
        IP addresses, for clients that check them: etcd, browsers, nbd clients)."""
        key = new_key()
        cert = self._sign(identity, key.public_key(), hosts, lifetime)
        return self._issued(key_pem(key), cert)

    def sign_csr(
        self,
        csr_pem: bytes,
        identity: Identity,
        hosts: list[str] | tuple[str, ...] = (),
        lifetime: dt.timedelta = DEFAULT_LIFETIME,
    ) -> Issued:
        """Sign a requester's public key for the identity the *CA* decided (the CSR's
        subject is ignored). A malformed or badly signed CSR is InvalidArgument."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise InvalidArgument(f"not a PEM certificate signing request: {e}") from None
        if not csr.is_signature_valid:
            raise InvalidArgument("the certificate signing request's signature is not valid")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise InvalidArgument("the signing request's key must be ECDSA P-256")
        return self._issued(None, self._sign(identity, pub, hosts, lifetime))

    def _issued(self, key: bytes | None, cert: x509.Certificate) -> Issued:
        return Issued(
            key=key,
            cert=cert_pem(cert),
            trust=self.trust_pem(),
            crl=self.crl_pem(),
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
        )

    def _sign(
        self,
        identity: Identity,
        public_key: ec.EllipticCurvePublicKey,
        hosts: list[str] | tuple[str, ...],
        lifetime: dt.timedelta,
    ) -> x509.Certificate:
        self._follow()
        if identity.cluster != self.cluster:
            raise InvalidArgument(
                f"identity {identity.uri} is for cluster {identity.cluster}, "
                f"this CA signs for {self.cluster}"
            )
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"cargohold {self.cluster}"),
                        x509.NameAttribute(NameOID.COMMON_NAME, f"{identity.role}/{identity.name}"),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(min(now + lifetime, self.cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(leaf=True),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    # --- rotation: stage, promote, retire ------------------------------------------------

    def _slot(self, slot: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        crt, key = self.dir / f"{slot}.crt", self.dir / f"{slot}.key"
        if not crt.exists():
            return None
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        k = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(k, ec.EllipticCurvePrivateKey)
        return cert, k

    def _slots(self) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
        """The CAs peers trust, the signer first: signer, staged next, retiring previous."""
        self._follow()
        out = [(self.cert, self.key)]
        for slot in ("next", "prev"):
            got = self._slot(slot)
            if got is not None:
                out.append(got)
        return out

    def _write_trust(self) -> None:
        _write(self.dir / "trust.crt", b"".join(cert_pem(c) for c, _ in self._slots()))
        self._write_crl()

    def stage(self) -> None:
        """Rotation, step 1: make the next CA and trust it everywhere, still signing with
        the current one. Components pick up ``trust.crt`` with their next renewal."""
        if (self.dir / "next.crt").exists():
            raise ConfigError(f"{self.dir} already has a staged CA: promote it first")
        key = new_key()
        _write(self.dir / "next.key", key_pem(key), private=True)
        _write(self.dir / "next.crt", cert_pem(_ca_cert(key, self.cluster)))
        self._write_trust()

    def promote(self) -> None:
        """Rotation, step 2 (once every component trusts the staged CA): sign with it.
        The old CA stays trusted, as ``prev``, so its certificates work until renewed."""
        self._follow()
        nxt = self._slot("next")
        if nxt is None:
            raise ConfigError(f"{self.dir} has no staged CA: stage one first")
        _write(self.dir / "prev.key", key_pem(self.key), private=True)
        _write(self.dir / "prev.crt", cert_pem(self.cert))
        self.cert, self.key = nxt
        _write(self.dir / "ca.key", key_pem(self.key), private=True)
        _write(self.dir / "ca.crt", cert_pem(self.cert))
        (self.dir / "next.crt").unlink()
        (self.dir / "next.key").unlink()
        self._write_trust()

    def retire(self) -> int:
        """Rotation, step 3 (once every certificate of the old CA was renewed or expired):
        stop trusting it. How many CAs were dropped (0 or 1)."""
        if not (self.dir / "prev.crt").exists():
            return 0
        (self.dir / "prev.crt").unlink()
        (self.dir / "prev.key").unlink()
        self._write_trust()
        return 1

    # --- revocation -----------------------------------------------------------------------

    def revoked(self) -> list[dict[str, object]]:
        try:
            data = json.loads((self.dir / "revoked.json").read_text())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise ConfigError(f"{self.dir}/revoked.json is damaged: {e}") from None
        return list(data.get("revoked", []))

    def revoke(self, serial: int, reason: str) -> None:
        """Revoke one certificate (by serial number) and rewrite the CRLs. Servers reload
        ``ca.crl`` with their credentials; certificates are short-lived, so a revoked one
        also stops working at its expiry wherever the CRL has not reached."""
        entries = [e for e in self.revoked() if e["serial"] != str(serial)]
        entries.append({"serial": str(serial), "reason": reason, "at": _now().isoformat()})
        _write(self.dir / "revoked.json", json.dumps({"revoked": entries}, indent=1).encode())
        self._write_crl()

    def _write_crl(self) -> None:
        """One CRL per trusted CA, each listing every revoked serial (serials are random
        128-bit numbers: one CA's list naming another's serial changes nothing). A CRL's
        next update is its CA's expiry: cargohold hands CRLs to its servers itself, nobody
        fetches them, so a CRL that "expired" would only lock every client out."""
        now = _now()
        serials = [int(str(e["serial"])) for e in self.revoked()]
        crls = []
        for cert, key in self._slots():
            b = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(cert.subject)
                .last_update(now - _SKEW)
                .next_update(cert.not_valid_after_utc)
            )
            for s in serials:
                b = b.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build()
                )
            crls.append(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        _write(self.dir / "ca.crl", b"".join(crls))


def _public(key: ec.EllipticCurvePublicKey | object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_usage(leaf: bool) -> x509.KeyUsage:
    """A leaf signs its TLS handshakes (ECDHE); a CA signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=leaf,
        key_cert_sign=not leaf,
        crl_sign=not leaf,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_cert(key: ec.EllipticCurvePrivateKey, cluster: str) -> x509.Certificate:
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"cargohold {cluster}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"cargohold CA {os.urandom(4).hex()}"),
        ]
    )
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(leaf=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
