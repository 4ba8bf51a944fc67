"""Suppressing findings: ``--ignore RULE`` and the ``audit.cargohold.io/ignore`` annotation.

``engine`` asks ``suppression()`` about every hit before it becomes an active finding.
Suppressed findings are kept (JSON lists them, SARIF marks them with ``suppressions``) but
never count towards ``--fail-on``. The annotation holds comma-separated rule ids, or
``all``, and is honoured on the object a finding points to, on any embedded object along
the finding's field path (a pod template, a volumeClaimTemplate) and on the object's
Namespace.
"""

from __future__ import annotations

from collections.abc import Iterable

from cargohold.audit.catalog import RULES_BY_ID
from cargohold.audit.checks import Hit
from cargohold.audit.errors import AuditError
from cargohold.audit.inventory import Inventory
from cargohold.audit.knowledge import IGNORE_ANNOTATION, parse_rule_list
from cargohold.audit.manifest import FieldPath, Manifest, format_path

ALL = "ALL"


def parse_cli_ignores(values: Iterable[str]) -> frozenset[str]:
    """``["CH003", "ch004,CH005"]`` -> ids; an unknown id is an input error."""
    ids: set[str] = set()
    for value in values:
        ids |= parse_rule_list(value)
    unknown = sorted(i for i in ids if i != ALL and i not in RULES_BY_ID)
    if unknown:
        raise AuditError(f"--ignore: unknown rule id {', '.join(unknown)} (see docs/audit.md)")
    return frozenset(ids)


def unknown_annotation_ids(manifests: Iterable[Manifest]) -> list[str]:
    """Warnings for ignore annotations that name rules which do not exist."""
    warnings = []
    for m in manifests:
        for path, value in _annotation_values(m, None):
            unknown = sorted(i for i in parse_rule_list(value) if i != ALL and i not in RULES_BY_ID)
            if unknown:
                warnings.append(
                    f"{m.location((*path, 'metadata', 'annotations'))}: {m.ref()}: "
                    f"{IGNORE_ANNOTATION} names unknown rule {', '.join(unknown)}"
                )
    return warnings


def suppression(rule_id: str, hit: Hit, inv: Inventory, cli: frozenset[str]) -> str | None:
    """Why the finding of ``rule_id`` at ``hit`` is suppressed, or ``None``."""
    if rule_id in cli or ALL in cli:
        return "--ignore"
    for path, value in _annotation_values(hit.manifest, hit.path):
        if _names(value, rule_id):
            where = f" ({format_path(path)})" if path else ""
            return f"annotation on {hit.manifest.ref()}{where}"
    ns = inv.namespaces.get(hit.manifest.ns_key)
    if ns is not None and _names(ns.annotations.get(IGNORE_ANNOTATION, ""), rule_id):
        return f"annotation on Namespace {ns.name}"
    return None


def _names(value: str, rule_id: str) -> bool:
    ids = parse_rule_list(value)
    return rule_id in ids or ALL in ids


def _annotation_values(m: Manifest, path: FieldPath | None) -> list[tuple[FieldPath, str]]:
    """(object path, ignore annotation) for the object itself and for each embedded object
    on ``path``; with ``path=None``, for every embedded object that is a known template."""
    prefixes: list[FieldPath]
    if path is None:
        prefixes = [(), ("spec", "template"), ("spec", "jobTemplate", "spec", "template")]
        templates = m.get(("spec", "volumeClaimTemplates"))
        if isinstance(templates, list):
            prefixes += [("spec", "volumeClaimTemplates", i) for i in range(len(templates))]
    else:
        prefixes = [tuple(path[:end]) for end in range(len(path) + 1)]
    out = []
    for prefix in prefixes:
        annotations = m.get((*prefix, "metadata", "annotations"))
        if isinstance(annotations, dict) and annotations.get(IGNORE_ANNOTATION) is not None:
            out.append((prefix, str(annotations[IGNORE_ANNOTATION])))
    return out
