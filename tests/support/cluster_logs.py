"""Show a local cluster's logs when a test through it failed, before its directory goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TAIL = 60  # lines of each log


def failed(request: Any) -> bool:
    """Whether the test that ``request`` belongs to failed (tests/conftest.py keeps reports)."""
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


def print_tails(directory: str | Path, lines: int = TAIL) -> None:
    """Print the last ``lines`` of every log under ``directory`` (pytest shows it with the
    failure)."""
    for log in sorted(Path(directory).rglob("*.log")):
        try:
            text = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"===== {log} (last {len(text)} lines)")
        print("\n".join(text))
