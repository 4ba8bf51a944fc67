"""Whether the block cipher's native path is in use: ``_gcm_runs``, a C extension that seals
and opens whole runs of 4 KiB blocks with OpenSSL's AES-256-GCM without holding the GIL
(``_gcm_runs.c``; built by the package's install where a C compiler and OpenSSL's headers
are, setup.py). Without it, or with ``CARGOHOLD_NO_NATIVE=1``, ``BlockCipher`` runs its
pure-Python loop: the same bytes, slower (docs/encryption.md, "Cost").

``runs`` is the module or None; tests switch paths by setting it (``use``)."""

from __future__ import annotations

import os
from types import ModuleType

NO_NATIVE_ENV = "CARGOHOLD_NO_NATIVE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(NO_NATIVE_ENV, "0") == "1":
        return None, f"switched off by {NO_NATIVE_ENV}=1"
    try:
        from cargohold.encryption import _gcm_runs  # type: ignore[attr-defined]
    except ImportError as e:
        return None, f"not built: {e}"
    return _gcm_runs, _gcm_runs.OPENSSL_VERSION


runs, why = _load()
built = runs  # the module as loaded at start, for ``use(True)``


def use(native: bool) -> None:
    """Switch the block cipher's path in this process (tests; every cipher, at once)."""
    global runs, why
    if native and built is None:
        raise RuntimeError(f"the native block cipher is not available: {why}")
    runs = built if native else None
    why = built.OPENSSL_VERSION if native and built is not None else "switched off (use)"


def status() -> str:
    """One line: ``encryption_native: true (OpenSSL ...)`` or ``false (why not)``."""
    return f"encryption_native: {'true' if runs is not None else 'false'} ({why})"
