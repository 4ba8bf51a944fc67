"""Runs the rule table over an inventory and returns one ``AuditResult``.

Called by ``cargohold.cli.audit_cmd`` and by tests. For each rule of ``catalog.RULES`` it
runs the check registered under the rule's id, turns hits into findings (object, field
path, file and line), splits off suppressed ones (``ignores``) and adds the decision-matrix
advice (``matrix``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from cargohold.audit import ignores, matrix
from cargohold.audit.catalog import RULES
from cargohold.audit.checks import CHECKS
from cargohold.audit.inventory import Inventory
from cargohold.audit.manifest import Manifest, format_path
from cargohold.audit.model import AuditResult, Finding, Rule


def audit(
    manifests: Iterable[Manifest],
    *,
    ignore: Iterable[str] = (),
    warnings: Iterable[str] = (),
    rules: Sequence[Rule] = RULES,
) -> AuditResult:
    """Audit ``manifests`` (from any mix of files, kustomize and a cluster)."""
    return run(Inventory(manifests), ignore=ignore, warnings=warnings, rules=rules)


def run(
    inv: Inventory,
    *,
    ignore: Iterable[str] = (),
    warnings: Iterable[str] = (),
    rules: Sequence[Rule] = RULES,
) -> AuditResult:
    cli_ignores = ignores.parse_cli_ignores(ignore)
    active: list[Finding] = []
    suppressed: list[Finding] = []
    for rule in rules:
        check = CHECKS.get(rule.id)
        if check is None:
            raise RuntimeError(f"rule {rule.id} has no registered check")
        for hit in check(inv):
            finding = Finding(
                rule=rule,
                message=hit.message,
                object=hit.manifest.ref(),
                field=format_path(hit.path),
                location=hit.manifest.location(hit.path),
            )
            reason = ignores.suppression(rule.id, hit, inv, cli_ignores)
            if reason:
                suppressed.append(replace(finding, suppressed_by=reason))
            else:
                active.append(finding)
    notes = [*warnings, *inv.warnings, *ignores.unknown_annotation_ids(inv.manifests)]
    return AuditResult(
        findings=tuple(sorted(active, key=Finding.sort_key)),
        suppressed=tuple(sorted(suppressed, key=Finding.sort_key)),
        advice=tuple(matrix.advise(inv)),
        warnings=tuple(notes),
        objects=len(inv.manifests),
    )
