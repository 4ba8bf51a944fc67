"""Suppression by --ignore and by the audit.cargohold.io/ignore annotation."""

from __future__ import annotations

import pytest
from audit_helpers import audit_paths, row

from cargohold.audit.errors import AuditError
from cargohold.audit.ignores import parse_cli_ignores

FILE = "ignores/annotated.yaml"


def test_annotations_suppress_on_object_template_claim_template_and_namespace() -> None:
    result = audit_paths(FILE)
    assert sorted((*row(f), f.suppressed_by) for f in result.suppressed) == [
        (
            "CH006",
            "StatefulSet vault",
            "spec.volumeClaimTemplates[0].spec.accessModes",
            FILE,
            74,
            "annotation on StatefulSet vault (spec.volumeClaimTemplates[0])",
        ),
        (
            "CH010",
            "Deployment template-level",
            "spec.template.spec.volumes[0].emptyDir",
            FILE,
            46,
            "annotation on Deployment template-level (spec.template)",
        ),
        (
            "CH010",
            "Pod legacy/in-legacy",
            "spec.volumes[0].emptyDir",
            FILE,
            101,
            "annotation on Namespace legacy",
        ),
        (
            "CH010",
            "Pod object-level",
            "spec.volumes[0].emptyDir",
            FILE,
            13,
            "annotation on Pod object-level",
        ),
    ]
    assert sorted(row(f) for f in result.findings) == [
        ("CH006", "StatefulSet vault", "spec.volumeClaimTemplates[1].spec.accessModes", FILE, 80),
        ("CH010", "Pod other-rule", "spec.volumes[0].emptyDir", FILE, 27),
    ]


def test_an_annotation_naming_an_unknown_rule_is_a_warning() -> None:
    result = audit_paths(FILE)
    assert len(result.warnings) == 1
    assert result.warnings[0].endswith(
        f"{FILE}:107: Pod typo: audit.cargohold.io/ignore names unknown rule CH999"
    )


def test_cli_ignore_suppresses_everywhere_and_keeps_the_findings() -> None:
    result = audit_paths(FILE, ignore=["ch010", "CH006"])
    assert result.findings == ()
    assert {f.suppressed_by for f in result.suppressed if f.object.name == "other-rule"} == {
        "--ignore"
    }
    assert len(result.suppressed) == 6


def test_cli_ignore_values() -> None:
    assert parse_cli_ignores(["CH001", "ch002, CH003"]) == {"CH001", "CH002", "CH003"}
    assert parse_cli_ignores(["all"]) == {"ALL"}
    with pytest.raises(AuditError, match="unknown rule id CH999, NOPE"):
        parse_cli_ignores(["CH999,nope"])


def test_ignore_all_on_the_command_line() -> None:
    result = audit_paths("rules/ch009/bad.yaml", ignore=["all"])
    assert result.findings == ()
    assert len(result.suppressed) == 4
