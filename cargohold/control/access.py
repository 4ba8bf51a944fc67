"""The records of who may use the cluster: tenants and the REST API's bearer tokens
(their keys are in ``model.keys``; what they mean: docs/security.md)."""

from __future__ import annotations

from pydantic import Field

from cargohold.control.model import Record


class Tenant(Record):
    """A tenant: its identities carry ``?tenant=<name>`` and see only its volumes, whose
    provisioned size stays within ``quota_bytes`` (None: none). Every create and expansion
    admitted bumps ``allocations`` in its transaction (control/tenancy.py)."""

    name: str
    quota_bytes: int | None = Field(default=None, ge=0)
    created_at: float = 0.0
    allocations: int = 0


class ApiToken(Record):
    """A bearer token of the REST API (control/token_store.py): only the SHA-256 of the
    token is stored; the token itself is shown once, when it is made."""

    id: str  # 12 hex digits, the token's second part (chk_<id>_<secret>)
    digest: str
    role: str  # security.identity.Role
    name: str
    tenant: str | None = None
    created: float = 0.0
    expires: float | None = None  # seconds since the epoch; None: never
