"""Entry point of the ``cargohold`` command: builds the typer app from the per-command modules.

A command's module is imported only when that command runs (``_COMMANDS`` names them), so
``cargohold volume list`` does not pay for the launcher, the auditor or the daemons'
imports before it does anything (docs/benchmarks.md, "CLI start-up"). ``cargohold --help``
lists every command, so it imports them all.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from cargohold import __version__

# The top-level commands and groups, in the order ``cargohold --help`` lists them, each
# with the modules (in cargohold/cli/) that define it or add commands to it; () for those
# defined here. A module that adds a command or a group to ``app`` (or to a group) must
# be named here: tests/unit/cli/test_cli_imports.py checks it.
_COMMANDS: dict[str, tuple[str, ...]] = {
    "version": (),
    "engine": (),
    "replica-server": ("replica_cmd",),
    "agent": ("agent_cmd",),
    "bench": ("bench_cmd",),
    "up": ("cluster_cmd",),
    "down": ("cluster_cmd",),
    "status": ("cluster_cmd",),
    "csi": ("csi_cmd",),
    "demo": ("demo_cmd",),
    "manager": ("manager_cmd",),
    "nbd-serve": ("nbd_cmd",),
    "events": ("orphan_cmd",),
    "audit": ("audit_cmd",),
    "replica": ("replica_cmd", "orphan_cmd"),
    "snapshot": ("snapshot_cmd", "snapshot_group_cmd"),
    "backup": ("backup_cmd",),
    "backup-target": ("backup_target_cmd",),
    "volume": (
        "volume_cmd",
        "standby_cmd",
        "volume_import_cmd",
        "volume_qos_cmd",
        "volume_key_cmd",
        "volume_scrub_cmd",
        "adopt_cmd",
    ),
    "disk": ("disk_cmd",),
    "job": ("job_cmd",),
    "node": ("node_cmd", "join_cmd"),
    "verify": ("verify_cmd",),
    "key": ("key_cmd",),
    "ca": ("ca_cmd",),
    "tenant": ("tenant_cmd",),
    "token": ("token_cmd",),
}

_on_demand = [False]  # True while app() runs: the root group then loads commands as named


@contextlib.contextmanager
def _loading_on_demand() -> Iterator[None]:
    before = _on_demand[0]
    _on_demand[0] = True
    try:
        yield
    finally:
        _on_demand[0] = before


class _Commands(TyperGroup):
    """The root group. Run as the ``cargohold`` command (``app()``), it imports a command's
    modules when the command line names it; built any other way (typer's CliRunner, or
    ``typer.main.get_command(app)`` in tests and tools), it has every command at once."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, modules in _COMMANDS.items():
            if not all(f"cargohold.cli.{m}" in sys.modules for m in modules):
                self.commands.pop(name, None)  # some of it is still to come: load it when asked
        if not _on_demand[0]:
            self._load()

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            # a name we do not know: load them all, for typer's "did you mean ...?"
            self._load(cmd_name if cmd_name in _COMMANDS else None)
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        self._load()
        order = list(_COMMANDS)
        return sorted(self.commands, key=lambda n: order.index(n) if n in order else len(order))

    def _load(self, name: str | None = None) -> None:
        """Import the modules of command ``name`` (of every command: None) and add it."""
        missing = [n for n in ([name] if name else _COMMANDS) if n not in self.commands]
        if not missing:
            return
        for n in missing:
            for module in _COMMANDS[n]:
                importlib.import_module(f"cargohold.cli.{module}")
        _tidy(app)
        with _loading_on_demand():
            built: Any = typer.main.get_command(app)
        if name:  # that one only: another group may still miss modules that add to it
            if name in built.commands:
                self.commands[name] = built.commands[name]
            return
        for n, cmd in built.commands.items():
            self.commands.setdefault(n, cmd)


class _App(typer.Typer):
    """``app()``, as the ``cargohold`` script and ``python -m cargohold`` call it, builds the
    root group to load commands on demand."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _loading_on_demand():
            return super().__call__(*args, **kwargs)


app = _App(
    name="cargohold",
    help="Replicated, thin-provisioned block storage for Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Commands,
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
    from cargohold.control.settings import ClientSettings

    out = sys.modules.get("cargohold.cli.output")  # loaded with the command, if it uses it
    if out is not None:
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
    """Print the cargohold version, and whether the block cipher's C extension is in use
    (``encryption_native: true``; docs/encryption.md, "Cost")."""
    from cargohold.encryption import native

    typer.echo(__version__)
    typer.echo(native.status())


@app.command(
    "engine",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def engine(ctx: typer.Context) -> None:
    """Serve a replicated volume over NBD (its options: cargohold engine --help)."""
    from cargohold.cli import engine_cmd  # argparse: the engine runs without typer

    raise typer.Exit(engine_cmd.main(list(ctx.args)))


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


_tidy(app)

if __name__ == "__main__":
    app()
