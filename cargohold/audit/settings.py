"""Tunables of the auditor: one typed settings class, like the other areas of cargohold.

Read from keyword arguments and ``CARGOHOLD_AUDIT_*`` environment variables (for example
``CARGOHOLD_AUDIT_KUBECTL=/opt/bin/kubectl``). ``cargohold.cli.audit_cmd`` builds one
``AuditSettings`` per run and hands it to ``kustomize`` (which kubectl, how long to wait)
and ``cluster`` (page size, request timeout); the table takes its width from it when stdout
is not a terminal. It lives inside the auditor because the auditor stands apart from the
data plane (see .importlinter).
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cargohold.audit.errors import AuditError


class AuditSettings(BaseSettings):
    """``cargohold audit``."""

    model_config = SettingsConfigDict(env_prefix="CARGOHOLD_AUDIT_", extra="forbid", frozen=True)

    kubectl: str = Field("kubectl", description="kubectl executable for `kubectl kustomize`")
    kustomize_timeout_seconds: float = Field(120.0, gt=0)
    page_size: int = Field(500, ge=1, description="objects per list call in cluster mode")
    request_timeout_seconds: int = Field(30, ge=1, description="timeout of each list call")
    table_width: int = Field(140, ge=40, description="table width when not on a terminal")


def load_settings() -> AuditSettings:
    """Settings from the environment; a bad ``CARGOHOLD_AUDIT_*`` value is an input error."""
    try:
        return AuditSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CARGOHOLD_AUDIT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise AuditError(f"bad audit settings: {problems}") from None
