"""Kustomize input: a clean base, an overlay that breaks a rule, findings mapped to files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from audit_helpers import DATA, rel, row

from cargohold.audit import kustomize
from cargohold.audit.engine import audit
from cargohold.audit.errors import KustomizeError
from cargohold.audit.loader import ManifestLoader
from cargohold.audit.settings import AuditSettings

KUSTOMIZE = DATA / "kustomize"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


def audit_kustomize(directory: Path):
    loader = ManifestLoader()
    return audit(kustomize.load(str(directory), loader), warnings=loader.warnings)


@needs_kubectl
def test_the_base_is_clean() -> None:
    result = audit_kustomize(KUSTOMIZE / "base")
    assert result.findings == ()
    assert result.objects == 2


@needs_kubectl
def test_overlay_finding_points_at_the_base_file_and_line_via_origin_annotations() -> None:
    result = audit_kustomize(KUSTOMIZE / "overlays/prod")
    assert [row(f) for f in result.findings] == [
        (
            "CH009",
            "Deployment prod/prod-app",
            "spec.template.spec.volumes[0].persistentVolumeClaim.claimName",
            "kustomize/base/deployment.yaml",
            25,
        )
    ]
    assert "3 pods, all mounting ReadWriteOnce PVC prod-data" in result.findings[0].message
    (advice,) = result.advice
    assert (rel(advice.location.source), advice.location.line) == ("kustomize/base/pvc.yaml", 1)


@needs_kubectl
def test_overlay_without_origin_annotations_points_at_its_kustomization() -> None:
    result = audit_kustomize(KUSTOMIZE / "overlays/staging")
    assert [row(f) for f in result.findings] == [
        (
            "CH010",
            "Deployment staging/app",
            "spec.template.spec.volumes[0].emptyDir",
            "kustomize/overlays/staging/kustomization.yaml",
            None,
        )
    ]


@needs_kubectl
def test_a_failing_render_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n- missing.yaml\n")
    with pytest.raises(KustomizeError, match=r"kubectl kustomize failed: .*missing\.yaml"):
        kustomize.render(str(tmp_path))


def test_missing_kubectl_and_missing_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KustomizeError, match="no-such-kubectl not found on PATH"):
        kustomize.render(str(tmp_path), AuditSettings(kubectl="no-such-kubectl"))
    with pytest.raises(KustomizeError, match="not a directory"):
        kustomize.render(str(tmp_path / "nope"))
