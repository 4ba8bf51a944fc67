"""Entry point of the ``cargohold`` command: builds the typer app from the per-command modules."""

from __future__ import annotations

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


def _register() -> None:
    # Each command group lives in its own module and adds itself to ``app``.
    from cargohold.cli import (  # noqa: F401
        agent_cmd,
        bench_cmd,
        cluster_cmd,
        csi_cmd,
        demo_cmd,
        disk_cmd,
        engine_cmd,
        manager_cmd,
        nbd_cmd,
        node_cmd,
        replica_cmd,
        snapshot_cmd,
        verify_cmd,
        volume_cmd,
    )

    try:
        from cargohold.cli import audit_cmd  # noqa: F401
    except ImportError:  # the auditor is optional until it lands
        pass


_register()

if __name__ == "__main__":
    app()
