"""``cargohold token ...``: bearer tokens of the manager's REST API (permission
``security``: an admin).

cargohold token create --role reader --name grafana --ttl 30d   # the token, printed once
cargohold token create --role csi --name k8s-east --tenant east
cargohold token list
cargohold token delete 3f2a9c01b7de

A token is printed once, on stdout alone (``> file`` keeps it out of the terminal's
scrollback); the manager keeps only its SHA-256. Hand it to a client as a FILE
($CARGOHOLD_TOKEN_FILE or ``<cluster dir>/token``), never on a command line.
"""

from __future__ import annotations

import re
import time
from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.main import app
from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    Format,
    err_console,
    handle_errors,
    render,
    say,
    table,
)
from cargohold.control.client import ManagerClient
from cargohold.errors import InvalidArgument

token_app = typer.Typer(help="Bearer tokens of the manager's REST API.")
app.add_typer(token_app, name="token", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (or plain seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if m is None or float(m.group(1)) <= 0:
        raise InvalidArgument(f"bad --ttl {text!r}: e.g. 30d, 12h, 15m, 3600")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _when(ts: Any) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(ts)))


def print_tokens(tokens: list[dict[str, Any]]) -> None:
    rows = [
        (
            escape(t["id"]),
            escape(t["role"]),
            escape(t["name"]),
            escape(t.get("tenant") or "-"),
            _when(t.get("created")),
            _when(t.get("expires")),
        )
        for t in tokens
    ]
    table(("ID", "ROLE", "NAME", "TENANT", "CREATED", "EXPIRES"), rows)


@token_app.command("create")
@handle_errors
def create(
    role: str = typer.Option(..., "--role", help="admin, operator, reader or csi"),
    name: str = typer.Option(..., "--name", help="who holds it (a person, a script, a driver)"),
    tenant: str | None = typer.Option(None, "--tenant", help="scope it to one tenant"),
    ttl: str | None = typer.Option(None, "--ttl", help="lifetime, e.g. 30d (default: none)"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Make a token and print it once (only the token on stdout with -o table)."""
    seconds = parse_ttl(ttl) if ttl else None
    with ManagerClient.discover(api, dir) as c:
        made = c.create_token(role, name, tenant, seconds)
    if output is Format.TABLE:
        typer.echo(made["token"])
        err_console.print(
            f"token {made['id']} for {escape(role)}/{escape(name)}: shown once; keep it in a "
            "file of mode 0600",
            soft_wrap=True,
            highlight=False,
        )
    else:
        render(made, output, lambda _: None)


@token_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List the tokens (never their secrets)."""
    with ManagerClient.discover(api, dir) as c:
        render(c.tokens(), output, print_tokens)


@token_app.command("delete")
@handle_errors
def delete(token_id: str, api: str | None = API, dir: str | None = DIR) -> None:
    """Delete a token: it authenticates nobody from now on."""
    with ManagerClient.discover(api, dir) as c:
        c.delete_token(token_id)
    say(f"token {token_id} deleted")
