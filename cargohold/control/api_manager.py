"""The manager API's routes about the manager itself: health, liveness, status, events."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI

from cargohold.control.api_errors import WHY, errors
from cargohold.control.api_json import JSON
from cargohold.control.auth import PUBLIC, requires
from cargohold.control.model import Event
from cargohold.control.service import Service
from cargohold.control.version_skew import running_version
from cargohold.control.views import ErrorBody, Health, StatusView
from cargohold.security.identity import Identity
from cargohold.security.policy import Permission


def add_health_routes(app: FastAPI, s: Service) -> None:
    """``/healthz``, ``/livez``, ``/api/v1/status``."""

    @app.get(
        "/healthz",
        dependencies=[PUBLIC],
        tags=["manager"],
        response_model=Health,
        responses={503: {"model": ErrorBody, "description": WHY[503]}},
    )
    async def healthz() -> JSON:
        """Readiness: the state store answers (a read within 2 s) and no damage requests
        or reconcilers ran into is left; else 503 saying what is wrong."""
        return await s.health()

    @app.get("/livez", dependencies=[PUBLIC], tags=["manager"], response_model=Health)
    async def livez() -> JSON:
        """Liveness: the process serves requests. It does not read the state store: a
        damaged or unreachable store is not mended by restarting the manager."""
        return {
            "ok": True,
            "leader": s.is_leader,
            "manager": s.manager_id,
            "backend": s.backend,
            "version": running_version(),
        }

    @app.get("/api/v1/status", tags=["manager"], response_model=StatusView, responses=errors())
    async def status(
        who: Annotated[Identity, Depends(requires(Permission.STATUS_READ))],
    ) -> JSON:
        return await s.status(who)


def add_event_routes(app: FastAPI, s: Service) -> None:
    """``/api/v1/events``."""

    @app.get("/api/v1/events", tags=["manager"], response_model=list[Event], responses=errors())
    async def events(
        who: Annotated[Identity, Depends(requires(Permission.NODES_READ))],
    ) -> list[JSON]:
        return await s.events(who)
