"""TLS for every link: contexts from a credentials directory, reloaded when it changes,
and the identity of the peer at the other end (standard library only).

A credentials directory holds what the CA issued to one component (Kubernetes' names for
the keys of a TLS Secret, so a Secret mounts as one):

- ``tls.crt`` and ``tls.key``: the component's certificate and key
- ``ca.crt``: the CAs it trusts (two during a CA rotation)
- ``ca.crl``: the CAs' revocation lists (optional; checked when present)

Both sides present certificates (mutual TLS) and speak TLS 1.3 only. Host names are not
what we check: nodes move between addresses and network namespaces; the identity URI in
the certificate is (``identity.py``), and the caller says which roles it accepts.

``Credentials.server_context()`` returns a context whose certificate, trust and CRL follow
the files: on every new handshake it checks (at most once a second) whether ``tls.crt``,
``ca.crt`` or ``ca.crl`` changed and then uses a context made from the new files, so a
renewed certificate or a rotated CA takes effect without a restart and without dropping a
connection. Clients call ``client_context()`` per connection; it is cached the same way.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.errors import ConfigError, PermissionDenied, Unauthenticated
from cargohold.security.identity import Identity, Role, from_peercert

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CRL_FILE = "ca.crl"

log = logging.getLogger("cargohold.security")

PLAINTEXT_WARNING = (
    "PLAINTEXT: {what} runs without TLS or authentication (asked for with --plaintext). "
    "Anyone who can reach it can read and change data. Use only for benchmarks."
)


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable only from this node (loopback): the one place
    a data-path endpoint may speak in clear without ``--plaintext`` (the NBD endpoint of
    the consumer on this node). A wildcard address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_plaintext(what: str) -> str:
    """Say loudly that a daemon runs without TLS (its log and stderr)."""
    msg = PLAINTEXT_WARNING.format(what=what)
    log.warning(msg)
    return msg


@dataclass
class Credentials:
    """A component's credentials directory, and the contexts made from it."""

    directory: Path
    _server: ssl.SSLContext | None = field(default=None, repr=False)
    _client: ssl.SSLContext | None = field(default=None, repr=False)
    _stamp: tuple[float, ...] = field(default=(), repr=False)
    _checked: float = field(default=0.0, repr=False)
    _outer: ssl.SSLContext | None = field(default=None, repr=False)
    _cluster: tuple[float, str] | None = field(default=None, repr=False)  # (tls.crt's mtime, it)
    # a server that also takes bearer tokens (the manager's REST API) asks for a client
    # certificate without requiring one; a certificate presented is still verified
    client_cert_optional: bool = False

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, client_cert_optional: bool = False
    ) -> Credentials:
        creds = cls(Path(directory), client_cert_optional=client_cert_optional)
        creds._refresh(force=True)
        return creds

    # --- files ----------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.directory / name

    def _files_stamp(self) -> tuple[float, ...]:
        out = []
        for name in (CERT_FILE, KEY_FILE, CA_FILE, CRL_FILE):
            try:
                out.append(self.path(name).stat().st_mtime_ns)
            except FileNotFoundError:
                out.append(0)
        return tuple(out)

    def _make(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.SSLContext(
            ssl.PROTOCOL_TLS_SERVER
            if purpose is ssl.Purpose.CLIENT_AUTH
            else ssl.PROTOCOL_TLS_CLIENT
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # the identity URI is checked instead (module docstring)
        ctx.verify_mode = ssl.CERT_REQUIRED
        if purpose is ssl.Purpose.CLIENT_AUTH and self.client_cert_optional:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        try:
            ctx.load_cert_chain(self.path(CERT_FILE), self.path(KEY_FILE))
            ctx.load_verify_locations(cafile=str(self.path(CA_FILE)))
            if self.path(CRL_FILE).exists() and self.path(CRL_FILE).stat().st_size:
                ctx.load_verify_locations(cafile=str(self.path(CRL_FILE)))
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load TLS credentials from {self.directory}: {e}") from None
        return ctx

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        stamp = self._files_stamp()
        if stamp == self._stamp and self._server is not None:
            return
        try:
            server = self._make(ssl.Purpose.CLIENT_AUTH)
            client = self._make(ssl.Purpose.SERVER_AUTH)
        except ConfigError:
            if force or self._server is None:
                raise
            log.exception(
                "new TLS credentials in %s do not load; keeping the old ones", self.directory
            )
            return
        if self._server is not None:
            log.info("TLS credentials in %s reloaded: %s", self.directory, self.describe())
        self._server, self._client, self._stamp = server, client, stamp

    def describe(self) -> str:
        """Our certificate in a log line: serial (hex, as ``openssl x509 -serial`` prints
        it), issuer and expiry, so an operator sees which certificate a daemon uses now."""
        import _ssl

        try:
            d = _ssl._test_decode_cert(str(self.path(CERT_FILE)))  # type: ignore[attr-defined]
        except (OSError, ssl.SSLError) as e:
            return f"certificate unreadable ({e})"
        issuer = ", ".join(f"{k}={v}" for rdn in d.get("issuer", ()) for k, v in rdn)
        return (
            f"certificate serial {d.get('serialNumber')} issued by {issuer}, "
            f"valid until {d.get('notAfter')}"
        )

    def identity(self) -> Identity:
        """The identity of our own certificate (uses ``cryptography``: not for the engine)."""
        return cert_identity(self.path(CERT_FILE).read_bytes())

    def cluster(self) -> str:
        """The cluster our own certificate is of, read with the standard library only (the
        engine checks its peers against it without loading ``cryptography``)."""
        stamp = self._files_stamp()[0]
        if self._cluster is not None and self._cluster[0] == stamp:
            return self._cluster[1]
        import _ssl

        try:
            decoded = _ssl._test_decode_cert(str(self.path(CERT_FILE)))  # type: ignore[attr-defined]
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot read {self.path(CERT_FILE)}: {e}") from None
        ident = from_peercert(decoded)
        if ident is None:
            raise ConfigError(f"{self.path(CERT_FILE)} carries no cargohold identity")
        self._cluster = (stamp, ident.cluster)  # read again when tls.crt changes
        return ident.cluster

    # --- contexts -------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The context to listen with; it follows the files (module docstring)."""
        self._refresh()
        if self._outer is None:
            outer = self._make(ssl.Purpose.CLIENT_AUTH)

            def pick(sslobj: Any, _name: str | None, _ctx: ssl.SSLContext) -> None:
                self._refresh()
                if self._server is not None:
                    sslobj.context = self._server

            outer.sni_callback = pick
            self._outer = outer
        return self._outer

    def client_context(self) -> ssl.SSLContext:
        self._refresh()
        assert self._client is not None
        return self._client


def cert_identity(pem: bytes) -> Identity:
    """The identity in a PEM certificate (the first one of a chain)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as e:
        raise ConfigError(f"not a cargohold certificate: {e}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    ident = from_peercert({"subjectAltName": [("URI", u) for u in uris]})
    if ident is None:
        raise ConfigError("the certificate carries no cargohold identity")
    return ident


def peer_identity(transport: Any) -> Identity | None:
    """The identity of the peer on an asyncio transport (None: not TLS, or no identity)."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    return from_peercert(sslobj.getpeercert())


def require(
    ident: Identity | None, roles: frozenset[Role] | set[Role], cluster: str | None = None
) -> Identity:
    """The peer is one of ``roles`` (and of ``cluster`` when given), else the error to send."""
    if ident is None:
        raise Unauthenticated("no cargohold certificate presented")
    if cluster is not None and ident.cluster != cluster:
        raise Unauthenticated(f"certificate of cluster {ident.cluster}, this is {cluster}")
    if ident.role not in roles:
        allowed = ", ".join(sorted(r.value for r in roles))
        raise PermissionDenied(f"{ident} may not do this (allowed: {allowed})")
    return ident


def credentials_or_plaintext(
    tls_dir: str | os.PathLike[str] | None, plaintext: bool, what: str
) -> Credentials | None:
    """A daemon's credentials (``--tls-dir``), or None when it was asked to run without TLS
    (``--plaintext``, announced loudly here); neither, or both, is a ConfigError."""
    if tls_dir and plaintext:
        raise ConfigError(f"{what}: give --tls-dir or --plaintext, not both")
    if tls_dir:
        return Credentials.load(tls_dir)
    if plaintext:
        warn_plaintext(what)
        return None
    raise ConfigError(
        f"{what} needs TLS credentials: give --tls-dir DIR (or CARGOHOLD_TLS_DIR), "
        "or --plaintext to run without TLS and authentication (benchmarks only)"
    )
