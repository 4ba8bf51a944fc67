"""What ``cargohold bench`` and ``cargohold verify`` run against, said the same way: a
TARGET that is a volume's name (its NBD endpoint is looked up through the manager) or an
NBD URI (``nbd://HOST:PORT/NAME``, ``nbds://...``, ``nbd+unix:///NAME?socket=PATH``: any
NBD server, no manager needed); and the question both ask before they overwrite data."""

from __future__ import annotations

import sys
from typing import Any

import typer

from cargohold.cli.output import fail

TARGET_HELP = "a volume's name, or an NBD URI (nbd://HOST:PORT/NAME, nbd+unix:///NAME?socket=PATH)"


def is_uri(target: str) -> bool:
    """An NBD URI rather than a volume name (names never hold ':')."""
    return "://" in target


def volume_endpoint(vol: dict[str, Any]) -> str:
    """An attached volume's NBD endpoint, or ConfigError (exit 2) saying to attach it."""
    from cargohold.errors import ConfigError

    endpoint = str(vol.get("endpoint") or "")
    if not endpoint:
        raise ConfigError(
            f"volume {vol.get('name')} is not attached ({vol.get('state')}): attach it first "
            "(`cargohold volume attach NAME --node NODE`), or give its NBD URI"
        )
    return endpoint


def confirm_overwrite(what: str, target: str, yes: bool) -> None:
    """Ask before ``what`` overwrites ``target``'s data: --yes (-y) says go on; without a
    terminal to ask on, refuse (exit 2)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(f"{what} overwrites the data of {target}; add --yes", 2)
    typer.confirm(f"{what.capitalize()} overwrites the data of {target}. Go on?", abort=True)
