"""The README's first command keeps working: `cargohold demo` runs to the end."""

from __future__ import annotations

import os
import re
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
    text = " ".join(out.stdout.split())  # rich wraps lines
    assert re.search(r"(\d+)/\1 files match their SHA-256", text), text
    assert "the volume is degraded: r1 RW, r2 ERR, r3 RW" in text
    assert "healthy: r1 RW, r2 RW, r3 RW" in text
    assert "the three replicas are identical" in text
    assert "repaired blocks 1" in text and "none bad" in text
    assert "Done:" in text
