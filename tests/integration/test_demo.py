"""The README's first command keeps working: `cargohold demo` runs to the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.procs import ROOT


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs not installed")
def test_demo_runs_to_the_end(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cargohold", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, COLUMNS="200"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "45/45 files match their sha256" in text
    assert "all three replicas identical" in text
    assert "repaired from node-1: 1" in text
    assert "Done: data intact" in text
