"""The ``cargohold`` CLI run as a real process against a local cluster's directory, for
tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cli(
    dir: Path, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``cargohold ARGS --dir DIR``; with ``check`` (the default) fail unless it exits 0."""
    p = subprocess.run(
        [sys.executable, "-m", "cargohold", *args, "--dir", str(dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"cargohold {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}"
        )
    return p


def js(dir: Path, *args: str) -> object:
    """``cargohold ARGS -o json --dir DIR``, decoded."""
    return json.loads(cli(dir, *args, "-o", "json").stdout)
