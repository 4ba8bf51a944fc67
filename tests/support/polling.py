"""Polling with a deadline, for tests and benchmarks: never a bare sleep."""

from __future__ import annotations

import time
from typing import Any


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true and return that; after ``timeout``
    seconds fail with an AssertionError that names ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {got!r})")
        time.sleep(interval)
