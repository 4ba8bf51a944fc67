"""``cargohold node join-token ...`` and ``cargohold node remove``: letting a node into the
cluster, and out of it for good (its certificates revoked).

    cargohold node join-token create --ttl 1h --uses 1 --output node-4.join
    cargohold node join-token list
    cargohold node join-token delete 0a1b2c3d4e5f
    cargohold node remove node-4

A join token is printed (or written) once: the manager keeps only its digest. The join
file (``--output``, mode 0600) holds the token and the cluster's CA certificates, with
which the new agent checks the manager before it shows the token; hand it to
``cargohold agent --join-token-file``.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.node_cmd import node_app
from cargohold.cli.output import API, DIR, OUTPUT, Format, handle_errors, render, say, table
from cargohold.control.client import ManagerClient
from cargohold.errors import ConfigError

join_app = typer.Typer(help="Make, list and delete join tokens for new nodes.")
node_app.add_typer(join_app, name="join-token", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """'90s', '30m', '1h', '7d' or seconds -> seconds."""
    t = text.strip().lower()
    try:
        if t and t[-1] in _UNITS:
            value = int(float(t[:-1]) * _UNITS[t[-1]])
        else:
            value = int(t)
    except ValueError:
        raise ConfigError(f"bad --ttl {text!r}: expected e.g. 30m, 1h, 7d or seconds") from None
    if value <= 0:
        raise ConfigError(f"--ttl must be more than 0, got {text!r}")
    return value


def write_join_file(path: str, token: str, trust: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{token}\n{trust}")


@join_app.command("create")
@handle_errors
def create(
    ttl: str = typer.Option("1h", "--ttl", help="how long the token is good for (30m, 1h, 7d)"),
    uses: int = typer.Option(1, "--uses", min=1, max=10000, help="how many nodes may join with it"),
    output_file: str | None = typer.Option(
        None,
        "--output",
        help="write the join file here (mode 0600: token + CA certificates) instead of "
        "printing the token",
    ),
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Make a join token (admin). It is shown once; the manager keeps its digest only."""
    seconds = parse_ttl(ttl)
    with ManagerClient.discover(api, dir) as c:
        tok = c.create_join_token(seconds, uses)
    if output_file:
        write_join_file(output_file, tok["token"], tok["trust"])
        say(
            f"join token [bold]{tok['id']}[/bold] ({uses} use(s), {seconds} s) written to "
            f"{escape(output_file)}: start the new agent with --join-token-file {escape(output_file)}"
        )
        return
    typer.echo(tok["token"])
    typer.echo(
        f"join token {tok['id']}: {uses} use(s), {seconds} s; CA sha256 {tok['ca_sha256']} "
        "(shown once; with --output FILE the join file also carries the CA certificates)",
        err=True,
    )


@join_app.command("list")
@handle_errors
def list_(output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR) -> None:
    """List join tokens (never the tokens themselves)."""

    def show(tokens: list[dict[str, Any]]) -> None:
        table(
            ("ID", "USES LEFT", "EXPIRES AT", "MADE BY"),
            [
                (t["id"], str(t["uses_left"]), f"{t['expires_at']:.0f}", escape(t["created_by"]))
                for t in tokens
            ],
        )

    with ManagerClient.discover(api, dir) as c:
        render(c.join_tokens(), output, show)


@join_app.command("delete")
@handle_errors
def delete(token_id: str, api: str | None = API, dir: str | None = DIR) -> None:
    """Delete a join token before it is used up or expires."""
    with ManagerClient.discover(api, dir) as c:
        c.delete_join_token(token_id)
    say(f"join token {escape(token_id)} deleted")


@node_app.command("remove")
@handle_errors
def remove(
    name: str, output: Format = OUTPUT, api: str | None = API, dir: str | None = DIR
) -> None:
    """Remove a node from the cluster and revoke its certificates (drain it first)."""
    with ManagerClient.discover(api, dir) as c:
        out = c.remove_node(name)
    render(
        out,
        output,
        lambda o: say(
            f"node [bold]{escape(name)}[/bold] removed; "
            f"{o['revoked_certificates']} certificate(s) revoked"
        ),
    )
