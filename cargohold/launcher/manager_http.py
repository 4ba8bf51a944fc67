"""HTTP GETs of the launcher to a manager or etcd (plain httpx over the one transport:
``unix:/PATH`` or ``http://HOST:PORT``): the health checks while a cluster starts, and
``get_json`` for tests and the CLI that read a local cluster's API.
"""

from __future__ import annotations

from typing import Any

import httpx

from cargohold.control.transport import ClientCredentials, sync_client
from cargohold.errors import ConfigError, InvalidArgument, ManagerUnavailable
from cargohold.launcher.processes import (
    LauncherError,
)


def _client(api: str, timeout: float, credentials: ClientCredentials | None) -> httpx.Client:
    try:
        return sync_client(api, timeout, credentials=credentials)  # the one HTTP layer
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None


def get_json(
    api: str, path: str, timeout: float = 3.0, credentials: ClientCredentials | None = None
) -> Any:
    """GET ``path`` from the manager (or etcd) at ``api`` and return the decoded JSON,
    presenting ``credentials`` (default: ``ClientCredentials.find()``)."""
    try:
        with _client(api, timeout, credentials) as c:
            r = c.get(path)
    except httpx.HTTPError as e:
        raise ManagerUnavailable(f"nothing answered at {api}: {e or type(e).__name__}") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:200]
        raise LauncherError(f"GET {path} at {api}: HTTP {r.status_code}: {message}")
    try:
        return r.json()
    except ValueError:
        raise LauncherError(f"GET {path} at {api} answered something not JSON") from None
