"""schemathesis hooks for tests/integration/test_manager_api.py (loaded through
``SCHEMATHESIS_HOOKS``).

JSON Schema counts 4096.0 as an integer; the manager's API does not (a request's integers
are JSON integers: 4096.0 and "4096" are refused with 422, as tests/unit/control/
test_api_errors.py checks). No schema keyword can say so, so the whole floats that
schemathesis sends for integer fields are sent as the integers they stand for."""

from __future__ import annotations

from typing import Any

import schemathesis


def _integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    return value


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    return _integers(body)
