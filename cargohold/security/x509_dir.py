"""A credentials directory in the file names of qemu and libnbd (GnuTLS), for NBD over TLS
with real clients: ``qemu-img``/``qemu-io`` (``--object tls-creds-x509,dir=DIR,...``),
``nbdinfo``/``nbdcopy``/``nbdfuse`` (``nbds://...?tls-certificates=DIR``).

Those tools read a directory holding ``ca-cert.pem``, ``ca-crl.pem`` and, for a client,
``client-cert.pem`` and ``client-key.pem`` (a server: ``server-*``). ``lay_out`` makes
one from a cargohold credentials directory (``tls.py``: ``ca.crt``, ``ca.crl``,
``tls.crt``, ``tls.key``) with relative symbolic links, so a renewed certificate or a
rotated CA reaches the tools without another step. Called by ``cargohold ca x509-dir``, the
CSI node plugin and the tests; pure file work, no crypto.
"""

from __future__ import annotations

import os
from pathlib import Path

from cargohold.errors import ConfigError
from cargohold.security.tls import CA_FILE, CERT_FILE, CRL_FILE, KEY_FILE

SIDES = ("client", "server")


def names(side: str) -> dict[str, str]:
    """qemu/GnuTLS file name -> cargohold credentials file name."""
    if side not in SIDES:
        raise ConfigError(f"side {side!r}: expected client or server")
    return {
        "ca-cert.pem": CA_FILE,
        "ca-crl.pem": CRL_FILE,
        f"{side}-cert.pem": CERT_FILE,
        f"{side}-key.pem": KEY_FILE,
    }


def lay_out(
    credentials: str | os.PathLike[str], out: str | os.PathLike[str], side: str = "client"
) -> Path:
    """Make ``out`` (created 0700 when missing) a qemu/GnuTLS directory for ``side`` whose
    files link to those of ``credentials``; existing links of those names are replaced.
    ConfigError when ``credentials`` lacks a file (``ca.crl`` is optional)."""
    src, dst = Path(credentials).absolute(), Path(out).absolute()
    wanted = names(side)
    for ours in wanted.values():
        if not (src / ours).is_file() and ours != CRL_FILE:
            raise ConfigError(f"{src} has no {ours}: not a credentials directory")
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for theirs, ours in wanted.items():
        link = dst / theirs
        if link.is_symlink() or link.exists():
            if not link.is_symlink():
                raise ConfigError(f"{link} exists and is not a link: refusing to replace it")
            link.unlink()
        if (src / ours).is_file():
            link.symlink_to(os.path.relpath(src / ours, dst))
    return dst
