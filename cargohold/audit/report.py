"""Renders an ``AuditResult`` for people (a rich table grouped by severity) and as JSON.

Called by ``cargohold.cli.audit_cmd``; SARIF lives next door in ``sarif``. The table is for
a terminal: one table per severity, then each rule that fired once with why it matters and
the fix, then the decision-matrix advice, then a summary line. The JSON carries everything,
suppressed findings and warnings included, and is stable for scripts (``"format": 1``).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from cargohold import __version__
from cargohold.audit.model import Advice, AuditResult, Finding, Rule, Severity

JSON_FORMAT_VERSION = 1

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
VERDICT_STYLE = {"fits": "green", "mismatch": "bold yellow", "unknown": "dim"}


def summary_line(result: AuditResult, fail_on: Severity | None) -> str:
    """``5 findings (1 critical, 4 medium), 2 suppressed, 31 objects; fail-on high: 1``."""
    counts = [f"{n} {s.label}" for s, n in result.counts().items() if n]
    text = f"{len(result.findings)} finding" + ("" if len(result.findings) == 1 else "s")
    if counts:
        text += f" ({', '.join(counts)})"
    text += f", {len(result.suppressed)} suppressed, {result.objects} objects audited"
    if fail_on is not None:
        text += f"; fail-on {fail_on.label}: {len(result.at_or_above(fail_on))} at or above"
    return text


def render_table(
    result: AuditResult,
    console: Console,
    *,
    fail_on: Severity | None = None,
    advice: bool = True,
) -> None:
    for severity in sorted(Severity, reverse=True):
        group = [f for f in result.findings if f.severity == severity]
        if group:
            console.print(_findings_table(severity, group))
    rules: list[Rule] = []
    for finding in result.findings:
        if finding.rule not in rules:
            rules.append(finding.rule)
    if rules:
        console.print(Text("Why it matters and how to fix it", style="bold underline"))
        for rule in rules:
            console.print(_rule_help(rule))
    if advice and result.advice:
        console.print(_advice_table(result.advice))
    style = "bold green" if not result.findings else "bold"
    console.print(Text(summary_line(result, fail_on), style=style))


def _findings_table(severity: Severity, findings: list[Finding]) -> Table:
    table = Table(
        title=Text(f"{severity.label.upper()} ({len(findings)})", style=SEVERITY_STYLE[severity]),
        title_justify="left",
        show_lines=True,
    )
    table.add_column("Rule", no_wrap=True, style="bold")
    table.add_column("Object", overflow="fold")
    table.add_column("Location", overflow="fold")
    table.add_column("Finding", ratio=1)
    for f in findings:
        message = Text(f.message)
        message.append(f"\n{f.field}", style="dim")
        table.add_row(f.rule_id, str(f.object), str(f.location), message)
    return table


def _rule_help(rule: Rule) -> Group:
    head = Text.assemble((f"{rule.id} ", "bold"), (rule.title, "bold"))
    parts: list[Any] = [
        head,
        Padding(Text(f"Why: {rule.why}"), (0, 0, 0, 2)),
        Padding(Text(f"Fix: {rule.fix}"), (0, 0, 0, 2)),
    ]
    if rule.fix_yaml:
        parts.append(Padding(Text(rule.fix_yaml, style="green"), (0, 0, 0, 4)))
    return Group(*parts)


def _advice_table(advice: tuple[Advice, ...]) -> Table:
    table = Table(title=Text("Decision matrix", style="bold"), title_justify="left")
    table.add_column("Claim", overflow="fold")
    table.add_column("Pattern", no_wrap=True)
    table.add_column("Used by", overflow="fold")
    table.add_column("Matrix row")
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Note", ratio=1)
    for a in advice:
        claim = Text(a.claim)
        if a.object.namespace:
            claim.append(f" ({a.object.namespace})", style="dim")
        table.add_row(
            claim,
            a.pattern,
            "\n".join(a.workloads) or "-",
            a.scenario,
            Text(a.verdict, style=VERDICT_STYLE.get(a.verdict, "")),
            a.note,
        )
    return table


# --- JSON ------------------------------------------------------------------------------


def finding_dict(f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule": f.rule_id,
        "severity": f.severity.label,
        "title": f.rule.title,
        "message": f.message,
        "object": {"kind": f.object.kind, "namespace": f.object.namespace, "name": f.object.name},
        "field": f.field,
        "source": f.location.source,
        "file": f.location.source if f.location.is_file else None,
        "line": f.location.line,
        "why": f.rule.why,
        "fix": f.rule.fix,
        "fix_yaml": f.rule.fix_yaml,
    }
    if f.suppressed_by:
        out["suppressed_by"] = f.suppressed_by
    return out


def advice_dict(a: Advice) -> dict[str, Any]:
    return {
        "claim": a.claim,
        "object": {"kind": a.object.kind, "namespace": a.object.namespace, "name": a.object.name},
        "field": a.field,
        "source": a.location.source,
        "line": a.location.line,
        "pattern": a.pattern,
        "workloads": list(a.workloads),
        "scenario": a.scenario,
        "recommended": a.recommended,
        "verdict": a.verdict,
        "note": a.note,
    }


def to_json(result: AuditResult, *, fail_on: Severity | None = None) -> dict[str, Any]:
    failing = result.at_or_above(fail_on) if fail_on is not None else []
    return {
        "format": JSON_FORMAT_VERSION,
        "tool": {"name": "cargohold audit", "version": __version__},
        "summary": {
            "objects": result.objects,
            "findings": len(result.findings),
            "by_severity": {s.label: n for s, n in result.counts().items()},
            "suppressed": len(result.suppressed),
            "fail_on": fail_on.label if fail_on is not None else None,
            "failed": bool(failing),
        },
        "findings": [finding_dict(f) for f in result.findings],
        "suppressed": [finding_dict(f) for f in result.suppressed],
        "advice": [advice_dict(a) for a in result.advice],
        "warnings": list(result.warnings),
    }


def render_json(result: AuditResult, *, fail_on: Severity | None = None) -> str:
    return json.dumps(to_json(result, fail_on=fail_on), indent=2)
