"""Entry point of the ``cargohold`` command: builds the typer app from the per-command modules."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from typing import Any

import typer

from cargohold import __version__

app = typer.Typer(
    name="cargohold",
    help="Replicated, thin-provisioned block storage for Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    api: str | None = typer.Option(
        None, "--api", help="manager URL for the command that follows (as its own --api)"
    ),
    dir: str | None = typer.Option(
        None, "--dir", help="local cluster directory for the command that follows (its --dir)"
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", help="table, json or yaml for the command that follows"
    ),
) -> None:
    """Replicated, thin-provisioned block storage for Kubernetes."""
    global_options(ctx, api=api, dir=dir, output=output)


def global_options(ctx: Any, **given: str | None) -> None:
    """``cargohold --dir X node list``: the options given before the subcommand become
    the defaults of the same options of every command below (``ctx.default_map``); one
    given after the subcommand still wins. --api and --dir also go into their variables
    ($CARGOHOLD_API, $CARGOHOLD_DIR), so they win over the caller's environment as the
    command's own flags do, and commands that read the settings see them."""
    from cargohold.cli import output as out
    from cargohold.control.settings import ClientSettings

    out._wide[0] = False  # set again by -o wide of this invocation (tests run many)
    for key in ("api", "dir"):
        value = given.get(key)
        if value:
            os.environ[ClientSettings.variable(key)] = value
    wanted = {k: v for k, v in given.items() if v}
    if wanted:
        ctx.default_map = _defaults(ctx.command, wanted)


def _defaults(cmd: Any, wanted: dict[str, str]) -> dict[str, Any]:
    """The default_map that gives every command under ``cmd`` the ``wanted`` values of
    the options it has (by parameter name)."""
    out: dict[str, Any] = {}
    subcommands = getattr(cmd, "commands", None)  # a group (typer's own, not click's)
    if isinstance(subcommands, dict):
        for name, sub in subcommands.items():
            got = _defaults(sub, wanted)
            if got:
                out[name] = got
    else:
        names = {p.name for p in getattr(cmd, "params", [])}
        out = {k: v for k, v in wanted.items() if k in names}
    return out


@app.command("version")
def version() -> None:
    """Print the cargohold version."""
    typer.echo(__version__)


_COMMANDS = (
    "agent_cmd",
    "backup_cmd",
    "backup_target_cmd",
    "bench_cmd",
    "cluster_cmd",
    "csi_cmd",
    "demo_cmd",
    "disk_cmd",
    "job_cmd",
    "manager_cmd",
    "nbd_cmd",
    "node_cmd",
    "join_cmd",
    "replica_cmd",
    "orphan_cmd",
    "snapshot_cmd",
    "snapshot_group_cmd",
    "standby_cmd",
    "verify_cmd",
    "volume_cmd",
    "volume_import_cmd",
    "volume_qos_cmd",
    "volume_key_cmd",
    "volume_scrub_cmd",
    "key_cmd",
    "adopt_cmd",
    "audit_cmd",
    "ca_cmd",
    "tenant_cmd",
    "token_cmd",
)


@app.command(
    "engine",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def engine(ctx: typer.Context) -> None:
    """Serve a replicated volume over NBD (its options: cargohold engine --help)."""
    from cargohold.cli import engine_cmd  # argparse: the engine runs without typer

    raise typer.Exit(engine_cmd.main(list(ctx.args)))


def _register() -> None:
    # Each command group lives in its own module and adds itself to ``app``.
    for name in _COMMANDS:
        importlib.import_module(f"cargohold.cli.{name}")


def clean_help(text: str) -> str:
    """A docstring as help for people: reST literals (``x``) without their backquotes,
    and each paragraph one line (the terminal wraps it; a docstring's line breaks cut it
    mid-sentence at 80 columns). Indented lines (examples) keep their breaks."""
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r":(?:class|func|meth|mod|attr):`~?([^`]+)`", r"\1", text)
    out = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = para.splitlines()
        if any(line.startswith((" ", "\t")) for line in lines[1:]):
            out.append(para)  # an example or a list: as written
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _tidy(typer_app: typer.Typer) -> None:
    """``clean_help`` on the help of every command and group under ``typer_app``."""
    for info in typer_app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc:
            info.help = clean_help(doc)
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        if isinstance(group.help, str):
            group.help = clean_help(group.help)
        if isinstance(sub.info.help, str):
            sub.info.help = clean_help(sub.info.help)
        _tidy(sub)


_register()
_tidy(app)

if __name__ == "__main__":
    app()
