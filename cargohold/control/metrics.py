"""The manager's Prometheus metrics: what the ``GET /metrics`` route serves.

Two kinds of numbers, on one registry of this manager's own (never prometheus_client's
global default registry):

- measured as things happen: API request latency by route *template* (``ApiTimer``, an
  ASGI middleware: ``/api/v1/volumes/{volume}``, never a URL, so one series per route and
  status class), and each reconciler pass's duration and failures (``Manager.run_once``
  calls ``reconciled``);
- read from the state store at scrape time (``state_families``): volumes by state and
  robustness (and one info series per volume), nodes up, this manager's leadership, the
  newest completed backup per volume, events recorded by kind, and each standby volume's
  lag (``standby_families``: the numbers ``GET /volumes/{volume}`` shows under
  ``standby.lag``; an active standby, which follows nothing, has none).

Names and labels come from cargohold/metrics/catalog.py (docs/observability.md).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram

from cargohold.control.backup_records import BackupState
from cargohold.control.model import StandbyState
from cargohold.control.repository import Repository
from cargohold.control.standby import lag
from cargohold.metrics.catalog import BY_NAME, family
from cargohold.metrics.exposition import registry, render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)
UNMATCHED = "unmatched"  # the route label of a request no route took (404s of any URL)


class ManagerMetrics:
    """The measured half, one per manager (``Service.metrics``)."""

    def __init__(self) -> None:
        self.registry = registry()
        api = BY_NAME["cargohold_api_request_duration_seconds"]
        self.api = Histogram(
            api.name, api.help, api.labels, registry=self.registry, buckets=API_BUCKETS
        )
        run = BY_NAME["cargohold_reconciler_run_duration_seconds"]
        self.passes = Histogram(
            run.name, run.help, run.labels, registry=self.registry, buckets=PASS_BUCKETS
        )
        err = BY_NAME["cargohold_reconciler_errors_total"]
        self.errors = Counter(err.name, err.help, err.labels, registry=self.registry)
        self.events: collections.Counter[str] = collections.Counter()

    def reconciled(self, name: str, seconds: float, failed: bool) -> None:
        self.passes.labels(name).observe(seconds)
        if failed:
            self.errors.labels(name).inc()
        else:
            self.errors.labels(name)  # the series exists (0) before the first failure

    def event(self, kind: str) -> None:
        self.events[kind] += 1

    def measured(self) -> bytes:
        return render(self.registry)


class ApiTimer:
    """ASGI middleware: each HTTP request's duration by method, route template and status
    class. The route is known once routing ran (``scope["route"]``)."""

    def __init__(self, app: ASGIApp, metrics: ManagerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = str(scope.get("method", ""))
            if method not in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
                method = "other"
            self.metrics.api.labels(method, template, f"{status[0] // 100}xx").observe(
                time.perf_counter() - t0
            )


async def state_families(
    repo: Repository, manager_id: str, leader: bool, events: dict[str, int]
) -> list[Any]:
    """The numbers read from the state store, as families (at scrape time)."""
    volumes = await repo.volumes()
    by_state: collections.Counter[tuple[str, str]] = collections.Counter()
    info = family("cargohold_volume_info")
    for v in volumes:
        key = (v.state.value, v.robustness.value)
        by_state[key] += 1
        info.add_metric([v.name, *key], 1.0)
    counts = family("cargohold_volumes")
    for (state, robustness), n in sorted(by_state.items()):
        counts.add_metric([state, robustness], float(n))
    nodes = family("cargohold_node_up")
    for node in await repo.nodes():
        nodes.add_metric([node.name], 0.0 if node.down_since is not None else 1.0)
    lead = family("cargohold_manager_leader")
    lead.add_metric([manager_id], 1.0 if leader else 0.0)
    newest: dict[str, float] = {}
    for b in await repo.backups():
        if b.state is BackupState.SUCCEEDED and b.volume:
            at = b.finished or b.created
            newest[b.volume] = max(newest.get(b.volume, 0.0), at)
    last = family("cargohold_backup_last_success_timestamp_seconds")
    for volume, at in sorted(newest.items()):
        last.add_metric([volume], at)
    ev = family("cargohold_events_total")
    for kind, n in sorted(events.items()):
        ev.add_metric([kind], float(n))
    return [counts, info, nodes, lead, last, ev, *standby_families(volumes, time.time())]


STANDBY_SERIES = (
    ("cargohold_standby_lag_seconds", "seconds"),
    ("cargohold_standby_data_age_seconds", "data_age_seconds"),
    ("cargohold_standby_backups_behind", "backups"),
    ("cargohold_standby_since_poll_seconds", "since_poll_seconds"),
)


def standby_families(volumes: list[Any], now: float) -> list[Any]:
    """Each following standby's lag (control/standby.py ``lag``), one series per volume
    and number; a number not known yet (nothing applied, never polled) has no series."""
    out = []
    for name, field in STANDBY_SERIES:
        fam = family(name)
        for v in sorted(volumes, key=lambda v: v.name):
            sb = v.standby
            if sb is None or sb.state is StandbyState.ACTIVE:
                continue
            value = lag(sb, now)[field]
            if value is not None:
                fam.add_metric([v.name], float(value))
        out.append(fam)
    return out
