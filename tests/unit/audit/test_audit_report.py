"""Renderers: the rich table, JSON and SARIF 2.1.0."""

from __future__ import annotations

import io
import json
from pathlib import Path

from audit_helpers import DATA, audit_paths
from rich.console import Console

from cargohold.audit import report, sarif
from cargohold.audit.catalog import RULES
from cargohold.audit.engine import audit
from cargohold.audit.model import AuditResult, Severity


def table_text(result: AuditResult, **kwargs) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, color_system=None)
    report.render_table(result, console, **kwargs)
    return buffer.getvalue()


def test_table_groups_by_severity_explains_rules_and_shows_the_matrix() -> None:
    result = audit_paths("rules/ch003/bad", "rules/ch009/bad.yaml")
    text = table_text(result, fail_on=Severity.HIGH)
    assert text.index("CRITICAL (3)") < text.index("HIGH (4)")
    assert "MEDIUM" not in text
    assert "Why it matters and how to fix it" in text
    assert "CH003 ReadWriteMany volume under a database" in text
    assert "accessModes: [ReadWriteOncePod]" in text  # the fix snippet
    assert "Decision matrix" in text and "mismatch" in text
    assert text.rstrip().endswith(
        "7 findings (3 critical, 4 high), 0 suppressed, 11 objects audited; "
        "fail-on high: 7 at or above"
    )
    assert "Decision matrix" not in table_text(result, advice=False)


def test_summary_line_of_a_clean_audit() -> None:
    result = audit_paths("clean")
    assert report.summary_line(result, None) == "0 findings, 0 suppressed, 12 objects audited"


def test_json_carries_findings_suppressed_advice_and_summary() -> None:
    result = audit_paths("ignores/annotated.yaml")
    data = json.loads(report.render_json(result, fail_on=Severity.MEDIUM))
    assert data["format"] == 1
    assert data["summary"] == {
        "objects": 7,
        "findings": 2,
        "by_severity": {"critical": 0, "high": 0, "medium": 2, "low": 0, "info": 0},
        "suppressed": 4,
        "fail_on": "medium",
        "failed": True,
    }
    first = data["findings"][0]
    assert set(first) == {
        "rule",
        "severity",
        "title",
        "message",
        "object",
        "field",
        "source",
        "file",
        "line",
        "why",
        "fix",
        "fix_yaml",
    }
    assert all("suppressed_by" in f for f in data["suppressed"])
    assert data["advice"][0]["pattern"] == "dedicated-rwo"
    assert len(data["warnings"]) == 1


def test_sarif_has_the_required_structure() -> None:
    result = audit_paths("rules/ch010/bad.yaml", "ignores/annotated.yaml")
    doc = sarif.to_sarif(result, root=DATA)
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    (run,) = doc["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in RULES]
    assert rules[9]["defaultConfiguration"] == {"level": "warning"}
    assert rules[9]["help"]["markdown"].count("```yaml") == 1
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == DATA.as_uri() + "/"
    results = run["results"]
    assert len(results) == len(result.findings) + len(result.suppressed)
    first = next(r for r in results if "Pod/cache" in json.dumps(r["locations"]))
    assert rules[first["ruleIndex"]]["id"] == first["ruleId"] == "CH010"
    assert first["level"] == "warning"
    physical = first["locations"][0]["physicalLocation"]
    assert physical == {
        "artifactLocation": {"uri": "rules/ch010/bad.yaml", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 14},
    }
    assert first["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "Pod/cache"
    assert len(first["partialFingerprints"]["cargoholdAudit/v1"]) == 32
    suppressed = [r for r in results if "suppressions" in r]
    assert len(suppressed) == 4
    assert {s["suppressions"][0]["kind"] for s in suppressed} == {"inSource"}


def test_sarif_for_cluster_objects_has_only_logical_locations(cluster_reader) -> None:
    result = audit(cluster_reader.read())
    doc = sarif.to_sarif(result)
    for res in doc["runs"][0]["results"]:
        (location,) = res["locations"]
        assert "physicalLocation" not in location
        assert location["logicalLocations"][0]["kind"] == "resource"
    notes = doc["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert notes == []


def test_sarif_uses_file_uris_outside_the_root(tmp_path: Path) -> None:
    result = audit_paths("rules/ch011/bad.yaml")
    doc = sarif.to_sarif(result, root=tmp_path)
    artifact = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert artifact["artifactLocation"] == {"uri": (DATA / "rules/ch011/bad.yaml").as_uri()}
    assert sarif.rule_name(RULES[0]) == "ImmediateVolumeBindingOnAZonalOrMultiZoneStorageClass"
