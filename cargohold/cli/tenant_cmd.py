"""``cargohold tenant ...``: the storage cluster's tenants (e.g. one per Kubernetes cluster
it serves) and their quotas. The admin's commands (permission ``tenants``); a tenant's own
identities (``cargohold ca issue ... --tenant T``) see only its volumes (docs/security.md,
"Tenants").

    cargohold tenant create k8s-prod --quota 10TiB
    cargohold tenant list
    cargohold tenant quota k8s-prod 20TiB        # or "none"
    cargohold tenant delete k8s-prod             # refused while it has volumes
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    Format,
    age,
    handle_errors,
    human_size,
    render,
    say,
    table,
)
from cargohold.cli.units import parse_size
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

tenant_app = typer.Typer(help="Create, list and delete tenants; set their quotas.")
app.add_typer(tenant_app, name="tenant", no_args_is_help=True)


def parse_quota(text: str | None) -> int | None:
    """'1TiB' -> bytes; 'none' (or nothing) -> no quota."""
    if text is None or text.strip().lower() in ("none", "unlimited"):
        return None
    n = parse_size(text, "--quota")
    if n < 0:
        raise ConfigError(f"a quota cannot be negative: {text!r}")
    return n


def _quota(t: dict[str, Any]) -> str:
    q = t.get("quota_bytes")
    return "none" if q is None else human_size(q)


def print_tenants(tenants: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(t["name"]),
            _quota(t),
            human_size(t.get("used_bytes")),
            str(t.get("volumes", 0)),
            escape(age(t.get("created_at"))),
        )
        for t in sorted(tenants, key=lambda t: t["name"])
    ]
    table(("NAME", "QUOTA", "USED", "VOLUMES", "CREATED"), rows)


def _said(t: dict[str, Any], what: str) -> None:
    say(
        f"tenant [bold]{escape(t['name'])}[/bold] {what}: quota {_quota(t)}, "
        f"uses {human_size(t.get('used_bytes'))} in {t.get('volumes', 0)} volume(s)"
    )


@tenant_app.command("create")
@handle_errors
def create(
    name: str,
    quota: str | None = typer.Option(
        None,
        "--quota",
        help="provisioned size its volumes may add up to, e.g. 1TiB (default: none)",
    ),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Create a tenant; then issue its identities with `cargohold ca issue --tenant NAME`."""
    with ManagerClient.discover(api, dir) as c:
        t = c.create_tenant(name, parse_quota(quota))
    render(t, output, lambda t: _said(t, "created"))


@tenant_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List the tenants, their quotas and what they use."""
    with ManagerClient.discover(api, dir) as c:
        render(c.tenants(), output, print_tenants)


@tenant_app.command("quota")
@handle_errors
def quota(
    name: str,
    size: str = typer.Argument(..., help="e.g. 2TiB, or none"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Set a tenant's quota (or none).

    Below what it uses now, its volumes keep working; new volumes and expansions are
    refused until it is under again."""
    with ManagerClient.discover(api, dir) as c:
        t = c.set_tenant_quota(name, parse_quota(size))
    render(t, output, lambda t: _said(t, "updated"))


@tenant_app.command("delete")
@handle_errors
def delete(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Delete a tenant (refused while it has volumes).

    Revoke its certificates too (`cargohold ca revoke`)."""
    with ManagerClient.discover(api, dir) as c:
        t = c.delete_tenant(name)
    render(t, output, lambda t: say(f"tenant [bold]{escape(t['name'])}[/bold] deleted"))
