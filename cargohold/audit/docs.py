"""Writes the rule reference of docs/audit.md from the rule table, so docs cannot drift.

The section between ``<!-- rules:begin -->`` and ``<!-- rules:end -->`` in docs/audit.md is
generated from ``catalog.RULES``. A unit test fails when it is stale; regenerate it with::

    python -m cargohold.audit.docs docs/audit.md          # rewrite the section
    python -m cargohold.audit.docs --check docs/audit.md  # exit 1 when stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cargohold.audit.catalog import RULES
from cargohold.audit.engine import audit
from cargohold.audit.loader import ManifestLoader
from cargohold.audit.model import Rule

BEGIN = "<!-- rules:begin -->"
END = "<!-- rules:end -->"


def rules_markdown() -> str:
    """The generated rule section: an index table, then one subsection per rule."""
    lines = [
        "| Id | Severity | Rule |",
        "|----|----------|------|",
        *(f"| [{r.id}](#{r.id.lower()}) | {r.severity.label} | {r.title} |" for r in RULES),
        "",
    ]
    for rule in RULES:
        lines += _rule_section(rule)
    return "\n".join(lines).rstrip("\n") + "\n"


def _rule_section(rule: Rule) -> list[str]:
    out = [
        f"### {rule.id}",
        "",
        f"**{rule.title}** — severity **{rule.severity.label}**",
        "",
        f"*Why it matters.* {rule.why}",
        "",
        f"*Fix.* {rule.fix}",
        "",
    ]
    if rule.fix_yaml:
        out += ["```yaml", rule.fix_yaml, "```", ""]
    if rule.example:
        out += ["Bad example (the auditor reports it):", "", "```yaml", rule.example.rstrip()]
        out += ["```", ""]
        others = _also_reported(rule)
        if others:
            out += [f"The example also triggers {', '.join(others)}.", ""]
    return out


def _also_reported(rule: Rule) -> list[str]:
    """Other rules the example trips, so a reader is not surprised when trying it."""
    manifests = ManifestLoader().load_text(rule.example, f"{rule.id}.yaml")
    return sorted({f.rule_id for f in audit(manifests).findings} - {rule.id})


def splice(document: str) -> str:
    """``document`` with the generated section replaced by the current one."""
    head, sep, rest = document.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"markers {BEGIN} and {END} not found")
    return f"{head}{BEGIN}\n{rules_markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the section is stale")
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    updated = splice(current)
    if args.check:
        if updated != current:
            print(f"{args.path}: rule section is stale; run python -m cargohold.audit.docs")
            return 1
        return 0
    args.path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
