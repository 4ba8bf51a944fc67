"""The manager's state store: pick a backend from a URL (``cargohold manager --state URL``).

- ``memory:`` — the in-memory twin (tests, the simulated cluster);
- ``sqlite:PATH`` — one database file, absolute or relative (the embedded default);
- ``etcd:https://HOST:PORT[,https://HOST2:PORT...]`` — an etcd cluster, for several managers
  (with ``etcd_tls``, the manager's etcd client credentials; http:// without them).

The contract every backend keeps is in ``base.py``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from cargohold.control.state.base import Compare, Delete, Entry, Put, StateStore
from cargohold.control.state.etcd import EtcdStateStore
from cargohold.control.state.memory import MemoryStateStore
from cargohold.control.state.sqlite import SQLiteStateStore
from cargohold.errors import ConfigError
from cargohold.security.tls import Credentials

__all__ = [
    "Compare",
    "Delete",
    "Entry",
    "EtcdStateStore",
    "MemoryStateStore",
    "Put",
    "SQLiteStateStore",
    "StateStore",
    "open_store",
]

FORMS = "memory:, sqlite:PATH or etcd:http://HOST:PORT[,http://HOST:PORT...]"


def _etcd_endpoints(spec: str, url: str) -> list[str]:
    endpoints = []
    for part in spec.split(","):
        endpoint = part.strip()
        try:
            u = urlsplit(endpoint)
            port = u.port  # raises ValueError when not a number or out of range
        except ValueError as e:
            raise ConfigError(f"state store {url!r}: bad etcd endpoint {endpoint!r}: {e}") from e
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(
                f"state store {url!r}: etcd endpoint {endpoint!r} is not http(s)://HOST[:PORT]"
            )
        if u.path.strip("/") or u.query or u.fragment or u.username:
            raise ConfigError(
                f"state store {url!r}: etcd endpoint {endpoint!r} must be just "
                "http(s)://HOST[:PORT], with no path, query or credentials"
            )
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        endpoints.append(f"{u.scheme}://{host}" + (f":{port}" if port is not None else ""))
    return endpoints


def open_store(url: str, create: bool = True, etcd_tls: str | None = None) -> StateStore:
    """The state store ``url`` names; ConfigError saying what is wrong when it names none.
    ``create=False``: a SQLite file must exist with its schema (nothing is created).
    ``etcd_tls``: the credentials directory of the etcd client certificate (etcd only)."""
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise ConfigError(f"state store {url!r}: expected {FORMS}")
    if etcd_tls and scheme != "etcd":
        raise ConfigError(f"an etcd client certificate was given, but {url!r} is not etcd")
    if scheme == "memory":
        if rest:
            raise ConfigError(f"state store {url!r}: the in-memory store takes no path")
        return MemoryStateStore()
    if scheme == "sqlite":
        if not rest.strip():
            raise ConfigError(f"state store {url!r}: sqlite needs a file path (sqlite:PATH)")
        return SQLiteStateStore(rest, create=create)
    if scheme == "etcd":
        if not rest.strip():
            raise ConfigError(f"state store {url!r}: etcd needs at least one endpoint")
        tls = Credentials.load(etcd_tls) if etcd_tls else None
        return EtcdStateStore(_etcd_endpoints(rest, url), tls=tls)
    raise ConfigError(f"state store {url!r}: unknown backend {scheme!r}; expected {FORMS}")
