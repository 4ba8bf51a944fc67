"""The manager's REST API (FastAPI): JSON in, ``Service`` calls, JSON out.

Errors from the one exception tree become HTTP statuses here, and only here:
NotFound 404, AlreadyExists and WrongState 409, InvalidArgument 400, validation 422,
Unschedulable 507, ManagerUnavailable (and StateStoreDamaged) 503; and the request's own
faults: an unknown route 404, a wrong method 405 (with ``Allow``), a body above
``max_request_bytes`` 413, a body that is not ``application/json`` 415. The body is always
``{"error": {"type": ..., "message": ...}}`` (422 keeps a ``detail`` list too, whose
``input`` is the offending value when it is plain JSON, else a short repr).
JSON bodies are parsed strictly: NaN and Infinity are refused, and so are numbers too large
for a float. The schema is served at ``/openapi.json`` and checked in as
docs/api/openapi.json.

The routes are grouped by resource in api_*.py (api_manager, api_nodes, api_volumes,
api_snapshots, api_orphans), registered here in one fixed order (the order of the schema's
paths); the errors' mapping is api_errors.py, the body rules api_json.py. Every route
declares the permission it needs (``auth.requires``; docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from cargohold import __version__
from cargohold.control import (
    api_backups,
    api_enrollment,
    api_groups,
    api_jobs,
    api_keys,
    api_manager,
    api_nodes,
    api_orphans,
    api_snapshots,
    api_standby,
    api_tenants,
    api_tokens,
    api_volumes,
)
from cargohold.control.api_errors import http_status, install_handlers, safe_input
from cargohold.control.api_json import JSONRoute, parse_json
from cargohold.control.auth import Auth, add_security
from cargohold.control.metrics import ApiTimer
from cargohold.control.service import Service

__all__ = ["build", "http_status", "parse_json", "safe_input"]


def build(
    service: Service,
    auth: Auth | None = None,
    extend: Callable[[FastAPI, Service], None] | None = None,
) -> FastAPI:
    """The API of ``service``. ``auth``: how callers are authenticated (control/auth.py);
    None authenticates nobody and lets everyone do everything (unit tests, the schema;
    the manager always passes its own). ``extend``: adds routes of a layer above this one
    (the web console, cargohold/ui), before every route's permission is checked."""
    app = FastAPI(
        title="cargohold manager",
        version=__version__,
        description="Nodes, disks, volumes, replicas, attachments, snapshots and operations of "
        "a cargohold cluster. See docs/control-plane.md.",
    )
    app.router.route_class = JSONRoute
    app.state.max_request_bytes = service.settings.max_request_bytes
    app.state.auth = auth or Auth.disabled()
    install_handlers(app, service)
    api_manager.add_health_routes(app, service)
    api_nodes.add_routes(app, service)
    api_volumes.add_routes(app, service)
    api_keys.add_routes(app, service)
    api_snapshots.add_routes(app, service)
    api_groups.add_routes(app, service)
    api_volumes.add_attachment_routes(app, service)
    api_orphans.add_routes(app, service)
    api_enrollment.add_routes(app, service)
    api_manager.add_event_routes(app, service)
    api_tenants.add_routes(app, service)
    api_tokens.add_routes(app, service)
    api_jobs.add_routes(app, service)
    api_backups.add_routes(app, service)
    api_manager.add_metrics_route(app, service)
    app.add_middleware(ApiTimer, metrics=service.metrics)  # /metrics: latency by route
    api_standby.add_routes(app, service)
    if extend is not None:
        extend(app, service)
    add_security(app)  # every route declares a permission (ValueError if one does not)
    return app
