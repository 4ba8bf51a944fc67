"""``python -m cargohold`` runs the CLI."""

from cargohold.cli.main import app

app()
