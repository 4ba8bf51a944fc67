"""Entry point of the ``cargohold`` command: builds the typer app from the per-command modules."""

from __future__ import annotations

import importlib

import typer

from cargohold import __version__

app = typer.Typer(
    name="cargohold",
    help="Replicated, thin-provisioned block storage for Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Replicated, thin-provisioned block storage for Kubernetes."""


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
    "standby_cmd",
    "verify_cmd",
    "volume_cmd",
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


_register()

if __name__ == "__main__":
    app()
