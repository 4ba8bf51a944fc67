"""deploy/'s kustomize overlays, rendered as the cluster would get them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects of ``deploy/<overlay>`` (``kubectl kustomize``); skips without kubectl."""
    if not shutil.which("kubectl"):
        pytest.skip("needs kubectl (kustomize)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]
