"""Fault hooks for the fault matrix (tests/e2e/fault_matrix.py), in the manner of borg's
failing chunker (src/borg/chunkers/failing.py): product code calls ``await pause(POINT)``
at the few places where a crash is worth landing exactly; the call does nothing unless the
engine's environment sets ``CARGOHOLD_FAULT_PAUSE_<POINT>`` to a number of seconds, and
then sleeps that long there (logging a warning), so that a test can SIGKILL the engine
inside that step instead of hoping to hit a window of a few milliseconds.

Points:

- ``SNAPSHOT``: in a snapshot create or delete (``snapshots``), after the first replica of
  the write set did it and before each of the others does: a kill there leaves the
  snapshot on some replicas only, which the retried operation must set right.

Never set in production; docs/reliability.md says which scenario uses which point.
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger("cargohold.engine")


def seconds(point: str) -> float:
    """The pause configured for ``point`` (0: none, or not a number)."""
    raw = os.environ.get(f"CARGOHOLD_FAULT_PAUSE_{point.upper()}", "")
    try:
        return max(0.0, float(raw)) if raw else 0.0
    except ValueError:
        return 0.0


async def pause(point: str) -> None:
    s = seconds(point)
    if s > 0:
        log.warning("fault hook: pausing %.2f s at %s (CARGOHOLD_FAULT_PAUSE_%s)", s, point, point)
        await asyncio.sleep(s)
