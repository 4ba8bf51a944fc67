"""Write the manager API's OpenAPI schema: ``python -m cargohold.control.openapi FILE``.

docs/api/openapi.json is generated with it; tests/unit/control/test_api.py fails when the
checked-in file and the code differ, so the published schema never drifts.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def schema() -> dict[str, Any]:
    from cargohold.control.api import build
    from cargohold.control.repository import Repository
    from cargohold.control.service import Service
    from cargohold.control.settings import ManagerSettings
    from cargohold.control.state import open_store

    # every setting has a default (the environment may override it); **{} because mypy
    # without pydantic's plugin takes Field's positional defaults for required arguments
    settings = ManagerSettings(**{})
    service = Service(Repository(open_store("memory:")), settings, "memory", "schema")
    return build(service).openapi()


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    out = render()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(out)
    else:
        sys.stdout.write(out)
