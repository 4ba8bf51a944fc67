"""Renders an ``AuditResult`` as SARIF 2.1.0 for code-scanning tools (GitHub, GitLab...).

Called by ``cargohold.cli.audit_cmd`` for ``-o sarif``. Every rule of ``catalog.RULES`` is
listed in ``runs[0].tool.driver.rules`` (so dashboards know rules that did not fire);
findings become ``results`` pointing at the file and line of the field. Objects read from a
live cluster or stdin have no file: their results carry only a logical location
(``Kind/namespace/name``). Suppressed findings are kept with a ``suppressions`` entry.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePath
from typing import Any

from cargohold import __version__
from cargohold.audit.catalog import RULES
from cargohold.audit.model import AuditResult, Finding, Rule

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "cargoholdAudit/v1"


def rule_name(rule: Rule) -> str:
    """``"Immediate volume binding on a zonal..."`` -> ``"ImmediateVolumeBindingOnAZonal..."``."""
    return "".join(w[:1].upper() + w[1:] for w in re.findall(r"[A-Za-z0-9]+", rule.title))


def rule_descriptor(rule: Rule) -> dict[str, Any]:
    help_text = f"{rule.why}\n\nFix: {rule.fix}"
    help_md = f"{rule.why}\n\n**Fix:** {rule.fix}"
    if rule.fix_yaml:
        help_text += f"\n\n{rule.fix_yaml}"
        help_md += f"\n\n```yaml\n{rule.fix_yaml}\n```"
    return {
        "id": rule.id,
        "name": rule_name(rule),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.why},
        "help": {"text": help_text, "markdown": help_md},
        "defaultConfiguration": {"level": rule.severity.sarif_level},
        "properties": {"severity": rule.severity.label, "tags": ["kubernetes", *rule.tags]},
    }


def to_sarif(result: AuditResult, *, root: Path | None = None) -> dict[str, Any]:
    base = (root or Path.cwd()).resolve()
    index = {rule.id: i for i, rule in enumerate(RULES)}
    results = [_result(f, index, base) for f in (*result.findings, *result.suppressed)]
    notifications = [{"level": "warning", "message": {"text": text}} for text in result.warnings]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cargohold-audit",
                        "fullName": "cargohold audit: storage-pattern auditor",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [rule_descriptor(rule) for rule in RULES],
                    }
                },
                "originalUriBaseIds": {SRCROOT: {"uri": base.as_uri() + "/"}},
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "results": results,
            }
        ],
    }


def render_sarif(result: AuditResult, *, root: Path | None = None) -> str:
    return json.dumps(to_sarif(result, root=root), indent=2)


def _result(f: Finding, index: dict[str, int], base: Path) -> dict[str, Any]:
    ref = f.object
    qualified = "/".join(p for p in (ref.kind, ref.namespace, ref.name) if p)
    location: dict[str, Any] = {
        "logicalLocations": [
            {"name": ref.name, "fullyQualifiedName": qualified, "kind": "resource"}
        ]
    }
    physical = _physical(f, base)
    if physical is not None:
        location["physicalLocation"] = physical
    fingerprint = hashlib.sha256(
        "|".join((f.rule_id, qualified, f.field)).encode("utf-8")
    ).hexdigest()[:32]
    out: dict[str, Any] = {
        "ruleId": f.rule_id,
        "ruleIndex": index[f.rule_id],
        "level": f.severity.sarif_level,
        "message": {"text": f"{ref}: {f.message}"},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint},
        "properties": {"severity": f.severity.label, "field": f.field},
    }
    if f.suppressed_by:
        kind = "external" if f.suppressed_by == "--ignore" else "inSource"
        out["suppressions"] = [{"kind": kind, "justification": f.suppressed_by}]
    return out


def _physical(f: Finding, base: Path) -> dict[str, Any] | None:
    loc = f.location
    if not loc.is_file or loc.source.startswith("<"):
        return None
    artifact: dict[str, Any]
    path = Path(loc.source)
    absolute = path if path.is_absolute() else (Path.cwd() / path)
    try:
        relative = PurePath(absolute.resolve().relative_to(base)).as_posix()
        artifact = {"uri": relative, "uriBaseId": SRCROOT}
    except ValueError:
        artifact = {"uri": absolute.resolve().as_uri()}
    physical: dict[str, Any] = {"artifactLocation": artifact}
    if loc.line:
        physical["region"] = {"startLine": loc.line}
    return physical
