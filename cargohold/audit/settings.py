"""Tunables of the auditor, in the one settings style of cargohold (``cargohold/settings.py``).

Read from keyword arguments and ``CARGOHOLD_AUDIT_*`` environment variables (for example
``CARGOHOLD_AUDIT_KUBECTL=/opt/bin/kubectl``). ``cargohold.cli.audit_cmd`` builds one
``AuditSettings`` per run and hands it to ``kustomize`` (which kubectl, how long to wait)
and ``cluster`` (page size, request timeout); the table takes its width from it when stdout
is not a terminal. It lives inside the auditor because the auditor stands apart from the
data plane (see .importlinter).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cargohold.audit.errors import AuditError
from cargohold.errors import ConfigError
from cargohold.settings import Settings, setting


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class AuditSettings(Settings):
    """``cargohold audit``."""

    env_prefix: ClassVar[str] = "CARGOHOLD_AUDIT_"
    component: ClassVar[str] = "audit"

    kubectl: str = setting("kubectl", "kubectl executable for `kubectl kustomize`")
    kustomize_timeout_seconds: float = setting(120.0, "seconds `kubectl kustomize` may take", gt=0)
    page_size: int = setting(500, "objects per list call in cluster mode", ge=1)
    request_timeout_seconds: int = setting(30, "timeout of each list call, seconds", ge=1)
    table_width: int = setting(140, "table width when not on a terminal", ge=40)


def load_settings() -> AuditSettings:
    """Settings from the environment; a bad ``CARGOHOLD_AUDIT_*`` value is an input error."""
    try:
        return AuditSettings()
    except ConfigError as exc:
        raise AuditError(f"bad audit settings: {exc}") from None
