"""The manager API's routes about the manager itself: health, liveness, status, events,
and the Prometheus scrape target ``/metrics`` (control/metrics.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Query, Response

from cargohold.control.api_errors import WHY, errors
from cargohold.control.api_json import JSON
from cargohold.control.auth import PUBLIC, requires
from cargohold.control.metrics import state_families
from cargohold.control.model import Event
from cargohold.control.service import Service
from cargohold.control.version_skew import running_version
from cargohold.control.views import ErrorBody, Health, StatusView
from cargohold.metrics.exposition import CONTENT_TYPE, render_families
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

    @app.get("/api/v1/events", tags=["manager"], response_model=list[Event], responses=errors(422))
    async def events(
        who: Annotated[Identity, Depends(requires(Permission.VOLUMES_READ))],
        volume: Annotated[
            str | None, Query(max_length=63, description="only this volume's events")
        ] = None,
        since: Annotated[
            float | None,
            Query(ge=0, le=1e11, description="only events after this Unix time (seconds)"),
        ] = None,
        limit: Annotated[
            int | None, Query(ge=1, le=10000, description="at most this many, the newest")
        ] = None,
    ) -> list[JSON]:
        """What happened, oldest first: volumes created, attached, detached and deleted,
        replicas failed, rebuilds started and finished, scrub finding rot, snapshots,
        backups done or failed, orphans, agents refusing (docs/observability.md). A
        tenant sees only its own volumes' events."""
        return await s.events(who, volume=volume, since=since, limit=limit)


def add_metrics_route(app: FastAPI, s: Service) -> None:
    """``/metrics``: Prometheus's scrape target (text exposition format 0.0.4)."""

    @app.get(
        "/metrics",
        tags=["manager"],
        responses={
            **errors(),
            200: {"content": {CONTENT_TYPE: {}}, "description": "the text exposition"},
        },
        response_class=Response,
    )
    async def metrics(
        who: Annotated[Identity, Depends(requires(Permission.METRICS_READ))],
    ) -> Response:
        """This manager's metrics: API latency by route template, reconciler passes, and
        from the state store volumes by state and robustness, nodes up, leadership, the
        newest backup per volume (docs/observability.md). Needs ``metrics:read``."""
        dynamic = await state_families(
            s.repo, s.manager_id, s.is_leader, dict(s.repo.events_recorded)
        )
        body = s.metrics.measured() + render_families(dynamic)
        return Response(body, media_type=CONTENT_TYPE)
