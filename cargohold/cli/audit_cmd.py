"""The ``cargohold audit`` command: audit manifests and clusters for storage pitfalls.

Registered on the typer app of ``cargohold.cli.main`` (which imports this module). It
gathers manifests from paths, stdin, kustomize directories and, when asked, a live cluster;
runs ``cargohold.audit.engine``; prints a table, JSON or SARIF; and exits with

- 0: no active finding at or above ``--fail-on``,
- 1: at least one such finding,
- 2: the input could not be read (missing file, bad YAML, kustomize or cluster failure)
  or the command line is wrong.
"""

from __future__ import annotations

import enum
import os
import sys

import typer
from rich.console import Console

from cargohold.audit import engine, ignores, kustomize, report, sarif
from cargohold.audit.errors import AuditError
from cargohold.audit.loader import ManifestLoader
from cargohold.audit.manifest import Manifest
from cargohold.audit.model import AuditResult, Severity
from cargohold.audit.settings import AuditSettings, load_settings
from cargohold.cli.main import app
from cargohold.errors import CargoholdError

EXIT_FINDINGS = 1


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    sarif = "sarif"


class FailOn(enum.StrEnum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"
    info = "info"
    none = "none"

    def severity(self) -> Severity | None:
        return None if self is FailOn.none else Severity.parse(self.value)


@app.command("audit")
def audit_command(
    paths: list[str] | None = typer.Argument(
        None,
        help="Manifest files or directories (YAML/JSON, searched recursively); - reads stdin.",
        show_default=False,
    ),
    kustomize_dirs: list[str] | None = typer.Option(
        None,
        "--kustomize",
        "-k",
        help="Render DIR with `kubectl kustomize` and audit it.",
        metavar="DIR",
    ),
    kubeconfig: str | None = typer.Option(
        None,
        "--kubeconfig",
        help="Audit the live cluster of this kubeconfig (read-only).",
        metavar="PATH",
    ),
    context: str | None = typer.Option(
        None, "--context", help="Kubeconfig context of the cluster to audit (read-only)."
    ),
    cluster: bool = typer.Option(
        False, "--cluster", help="Audit the cluster of the current kubeconfig context."
    ),
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o", help="Format."),
    fail_on: FailOn = typer.Option(
        FailOn.high, "--fail-on", help="Exit 1 when findings at or above this severity exist."
    ),
    ignore: list[str] | None = typer.Option(
        None,
        "--ignore",
        help="Rule id to suppress (repeatable, or comma-separated).",
        metavar="RULE",
    ),
    advice: bool = typer.Option(
        True, "--advice/--no-advice", help="Show the decision-matrix advice in the table."
    ),
) -> None:
    """Audit Kubernetes manifests and clusters for storage pitfalls (see docs/audit.md)."""
    threshold = fail_on.severity()
    try:
        settings = load_settings()
        result = _audit(
            paths or [],
            kustomize_dirs or [],
            kubeconfig=kubeconfig,
            context=context,
            cluster=cluster,
            ignore=ignore or [],
            settings=settings,
        )
    except CargoholdError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    _emit(result, output, threshold, advice, settings)
    if threshold is not None and result.at_or_above(threshold):
        raise typer.Exit(EXIT_FINDINGS)


def _audit(
    paths: list[str],
    kustomize_dirs: list[str],
    *,
    kubeconfig: str | None,
    context: str | None,
    cluster: bool,
    ignore: list[str],
    settings: AuditSettings,
) -> AuditResult:
    live = cluster or kubeconfig is not None or context is not None
    if not paths and not kustomize_dirs and not live:
        raise AuditError(
            "nothing to audit: give manifest paths (or - for stdin), --kustomize DIR, "
            "or a cluster with --cluster, --kubeconfig or --context"
        )
    ignores.parse_cli_ignores(ignore)  # a typo fails before any file or cluster is read
    loader = ManifestLoader()
    manifests: list[Manifest] = loader.load_paths(paths, stdin=sys.stdin)
    for directory in kustomize_dirs:
        manifests += kustomize.load(directory, loader, settings)
    warnings = list(loader.warnings)
    if live:
        from cargohold.audit import cluster as cluster_source  # imports kubernetes: lazily

        reader = cluster_source.connect(kubeconfig, context, settings)
        manifests += reader.read()
        warnings += reader.warnings
    return engine.audit(manifests, ignore=ignore, warnings=warnings)


def _emit(
    result: AuditResult,
    output: OutputFormat,
    threshold: Severity | None,
    advice: bool,
    settings: AuditSettings,
) -> None:
    if output is OutputFormat.json:
        typer.echo(report.render_json(result, fail_on=threshold))
    elif output is OutputFormat.sarif:
        typer.echo(sarif.render_sarif(result))
    else:
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=settings.table_width)
        report.render_table(result, console, fail_on=threshold, advice=advice)
