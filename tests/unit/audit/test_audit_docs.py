"""docs/audit.md stays in step with the rule table and the command line."""

from __future__ import annotations

from pathlib import Path

from cargohold.audit import docs
from cargohold.audit.catalog import RULES
from cargohold.audit.knowledge import IGNORE_ANNOTATION

DOC = Path(__file__).resolve().parents[3] / "docs" / "audit.md"


def test_rule_section_is_generated_from_the_rule_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert docs.splice(text) == text, "run: python -m cargohold.audit.docs docs/audit.md"
    assert docs.main(["--check", str(DOC)]) == 0


def test_every_rule_is_documented_with_severity_and_example() -> None:
    text = DOC.read_text(encoding="utf-8")
    for rule in RULES:
        assert f"### {rule.id}\n" in text
        assert f"**{rule.title}** — severity **{rule.severity.label}**" in text


def test_the_command_line_and_exit_codes_are_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for needle in (
        "--kustomize",
        "--kubeconfig",
        "--context",
        "--cluster",
        "--fail-on",
        "--ignore",
        "-o, --output table\\|json\\|sarif",
        "| 2 |",
        IGNORE_ANNOTATION,
        "buildMetadata: [originAnnotations]",
    ):
        assert needle in text, needle


def test_check_mode_reports_a_stale_section(tmp_path: Path) -> None:
    stale = tmp_path / "audit.md"
    stale.write_text(f"intro\n{docs.BEGIN}\nold\n{docs.END}\nend\n", encoding="utf-8")
    assert docs.main(["--check", str(stale)]) == 1
    assert docs.main([str(stale)]) == 0
    assert docs.main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8").endswith(f"{docs.END}\nend\n")
