"""Who a certificate speaks for: a cluster, a role and a name (pure).

Every certificate the cluster's CA issues carries one URI in its subjectAltName:

    cargohold://<cluster id>/<role>/<name>[?tenant=<tenant>]

- ``manager/<name>``: a manager (any of the HA replicas)
- ``agent/<node>`` and ``replica/<node>``: a node's agent and its replica server
- ``engine/<volume>``: the engine of one volume, and only that volume
- ``csi/<name>``: a CSI driver (its tenant: the Kubernetes cluster it serves)
- ``admin/<user>``, ``operator/<user>``, ``reader/<user>``: people and scripts using the CLI
- ``etcd/<name>``: the members of the etcd cluster that holds an HA manager's state
  (``etcd.py``); it speaks for nothing on cargohold's own sockets

The CA decides the URI when it signs; nothing a client sends can change it. The format is
versioned by its scheme: a future change gets a new scheme, never a new meaning for this one.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cargohold.errors import InvalidArgument

SCHEME = "cargohold"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class Role(enum.StrEnum):
    MANAGER = "manager"
    AGENT = "agent"
    REPLICA = "replica"
    ENGINE = "engine"
    CSI = "csi"
    ADMIN = "admin"
    OPERATOR = "operator"
    READER = "reader"
    ETCD = "etcd"


COMPONENTS = frozenset({Role.MANAGER, Role.AGENT, Role.REPLICA, Role.ENGINE})
"""Roles held by cargohold's own daemons (never issued to a person)."""


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise InvalidArgument(
            f"{what} {value!r} is not a valid name: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 253 characters"
        )
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    cluster: str
    role: Role
    name: str
    tenant: str | None = None

    def __post_init__(self) -> None:
        check_name("cluster id", self.cluster)
        check_name(f"{self.role} name", self.name)
        if self.tenant is not None:
            check_name("tenant", self.tenant)

    @property
    def uri(self) -> str:
        base = f"{SCHEME}://{self.cluster}/{self.role}/{self.name}"
        return base if self.tenant is None else f"{base}?tenant={self.tenant}"

    def __str__(self) -> str:
        who = f"{self.role}/{self.name}"
        return who if self.tenant is None else f"{who} (tenant {self.tenant})"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        parts = urlsplit(uri)
        segments = parts.path.strip("/").split("/")
        if parts.scheme != SCHEME or not parts.netloc or len(segments) != 2:
            raise InvalidArgument(f"not a cargohold identity: {uri!r}")
        try:
            role = Role(segments[0])
        except ValueError:
            raise InvalidArgument(f"unknown role {segments[0]!r} in {uri!r}") from None
        tenants = parse_qs(parts.query).get("tenant", [])
        return cls(parts.netloc, role, segments[1], tenants[0] if tenants else None)


def from_peercert(cert: dict[str, Any] | None) -> Identity | None:
    """The identity in a peer certificate as ``ssl`` decodes it (``getpeercert()``), or
    None when it carries none (a certificate some other CA's user made)."""
    if not cert:
        return None
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    found = []
    for uri in uris:
        if uri.startswith(f"{SCHEME}://"):
            try:
                found.append(Identity.from_uri(uri))
            except InvalidArgument:
                return None
    return found[0] if len(found) == 1 else None
