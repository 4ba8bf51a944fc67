"""The manager's volume events as Kubernetes Events on each volume's PVC.

The controller plugin runs ``PvcEvents`` in a thread (``csi/server.py``): every few seconds
``run_once()`` asks the manager for the events after the last one it saw
(``GET /api/v1/events?since=``, with the driver's own credentials, so a tenant's driver sees
its own volumes only), finds each event's PVC in its volume's labels (``pvc.cargohold.io/
namespace`` and ``/name``, stored by CreateVolume from the external-provisioner's
``--extra-create-metadata`` parameters) and posts a core/v1 Event on it through an
``EventSink`` (``csi/kube_events.py`` in production, a fake in tests).

- ``involvedObject`` is the PVC (with its uid, which ``kubectl describe pvc`` selects on);
  ``reason`` is the kind in CamelCase (``ReplicaFailed``); ``type`` is Warning for
  failures and rot, Normal otherwise; ``source.component`` is ``cargohold``.
- The Event's name carries the cargohold event's id: posting it twice (a restart, or the
  second controller replica) is refused by the API server as already existing and skipped.
- A repeat of the same reason and message on the same PVC updates the first Event's
  ``count`` and ``lastTimestamp`` instead of adding another (what ``kubectl describe``
  shows as "x3 over 5m"), as Kubernetes' own event recorder does.
- Volumes without the labels (made without ``--extra-create-metadata``, or outside
  Kubernetes) and PVCs that no longer exist (or whose namespace is being deleted) are
  skipped; an Event the API server refuses (403, 422) is logged and skipped, so one bad
  event never holds up the others. A failure to reach the manager or the API server is
  logged and the pass retried at the next; it never stops the driver.

docs/observability.md ("Kubernetes Events on the PVC").
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cargohold.control.client import ManagerClient
from cargohold.csi.parameters import PVC_NAME_LABEL, PVC_NAMESPACE_LABEL
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

log = logging.getLogger("cargohold.csi.pvc_events")

COMPONENT = "cargohold"
WARNING_KINDS = frozenset(
    {"replica-failed", "scrub-found-rot", "backup-failed", "agent-refused", "orphan-found"}
)
LOOKBACK = 300.0  # seconds of history a new loop posts (what the API server has not seen)
OVERLAP = 5.0  # each query reaches this far behind the newest event seen (clock ties)
SEEN_MAX = 4096  # event ids remembered against re-posting within one process
REPEATS_MAX = 1024  # (PVC, reason, message) remembered for count/lastTimestamp


class PvcGone(NotFound):
    """The sink's answer when the PVC does not exist (HTTP 404)."""


class EventGone(NotFound):
    """The sink's answer to patching an Event that expired (the API server's event TTL)."""


class KubeUnavailable(CargoholdError):
    """The API server did not answer, or answered 5xx/429: the pass stops, the next retries."""


class EventSink(Protocol):
    """What the loop needs of the Kubernetes API (``csi/kube_events.py``; fakes in tests)."""

    def pvc_uid(self, namespace: str, name: str) -> str:
        """The PVC's uid; PvcGone when there is none."""
        ...

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the core/v1 Event; errors.AlreadyExists when its name is taken (409)."""
        ...

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Merge-patch the Event ``name``; EventGone when it does not exist."""
        ...


@dataclass(frozen=True)
class Pvc:
    namespace: str
    name: str
    uid: str


def reason(kind: str) -> str:
    """``replica-failed`` -> ``ReplicaFailed``."""
    return "".join(part[:1].upper() + part[1:] for part in kind.split("-") if part)


def event_type(kind: str) -> str:
    return "Warning" if kind in WARNING_KINDS else "Normal"


def timestamp(at: float) -> str:
    """RFC 3339 in UTC, seconds (what core/v1 Event timestamps hold)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(pvc: Pvc, event_id: str) -> str:
    """The Event's name: the PVC's and the cargohold event's id (DNS subdomain, <= 253)."""
    return f"{pvc.name}.cargohold.{event_id}"[:253].rstrip(".-")


def pvc_of(labels: dict[str, str]) -> tuple[str, str] | None:
    ns, name = labels.get(PVC_NAMESPACE_LABEL, ""), labels.get(PVC_NAME_LABEL, "")
    return (ns, name) if ns and name else None


def to_k8s_event(event: dict[str, Any], pvc: Pvc, instance: str = "") -> dict[str, Any]:
    """The core/v1 Event for one manager event (``model.Event`` as JSON) on ``pvc``."""
    kind = str(event.get("kind", ""))
    when = timestamp(float(event.get("at", 0.0)))
    message = str(event.get("message", ""))
    if event.get("volume"):
        message = f"{message} (volume {event['volume']})"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(pvc, str(event["id"])), "namespace": pvc.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": pvc.namespace,
            "name": pvc.name,
            "uid": pvc.uid,
        },
        "reason": reason(kind),
        "message": message[:1024],
        "type": event_type(kind),
        "count": 1,
        "firstTimestamp": when,
        "lastTimestamp": when,
        "source": {"component": COMPONENT, **({"host": instance} if instance else {})},
        "reportingComponent": "csi.cargohold.io",
        "reportingInstance": instance,
    }


class PvcEvents:
    """The loop: ``run_once()`` posts what happened since the last pass; ``run()`` repeats it."""

    def __init__(
        self,
        client: ManagerClient,
        sink: EventSink,
        *,
        instance: str = "",
        interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.sink, self.instance, self.interval = client, sink, instance, interval
        self.since = clock() - LOOKBACK
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        # (namespace, pvc, reason, message) -> (the first Event's name, its count)
        self._repeats: collections.OrderedDict[tuple[str, str, str, str], tuple[str, int]] = (
            collections.OrderedDict()
        )
        self._pvcs: dict[str, Pvc | None] = {}  # volume -> its PVC (None: none)
        self.posted = 0

    def _pvc(self, volume: str) -> Pvc | None:
        if volume in self._pvcs:
            return self._pvcs[volume]
        try:
            labels = self.client.volume(volume).get("labels") or {}
        except NotFound:
            return None  # deleted before we saw it: its PVC is not known (not cached)
        ref = pvc_of(labels)
        pvc = None
        if ref is not None:
            try:
                pvc = Pvc(ref[0], ref[1], self.sink.pvc_uid(*ref))
            except (PvcGone, PermissionDenied) as e:
                log.info("volume %s: no events on PVC %s/%s: %s", volume, *ref, e)
                pvc = None
        self._pvcs[volume] = pvc
        return pvc

    def _remember(self, eid: str) -> None:
        self._seen[eid] = None
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)

    def post(self, event: dict[str, Any], pvc: Pvc) -> None:
        body = to_k8s_event(event, pvc, self.instance)
        key = (pvc.namespace, pvc.name, body["reason"], body["message"])
        first = self._repeats.get(key)
        if first is not None:
            name, count = first[0], first[1] + 1
            try:
                self.sink.patch(
                    pvc.namespace, name, {"count": count, "lastTimestamp": body["lastTimestamp"]}
                )
            except EventGone:
                first = None  # expired: this repeat starts a new Event
        if first is None:
            name, count = body["metadata"]["name"], 1
            try:
                self.sink.create(pvc.namespace, body)
            except AlreadyExists:
                pass  # posted before (an earlier run, or the other controller replica)
        self._repeats[key] = (name, count)
        self._repeats.move_to_end(key)
        while len(self._repeats) > REPEATS_MAX:
            self._repeats.popitem(last=False)
        self.posted += 1

    def run_once(self) -> int:
        """Post the events after the last pass: how many were posted."""
        events = self.client.events(since=self.since - OVERLAP)
        n = 0
        for e in events:
            eid = str(e.get("id", ""))
            if not eid or eid in self._seen:
                continue
            volume = str(e.get("volume") or "")
            if e.get("kind") == "volume-deleted":
                pvc = self._pvcs.pop(volume, None)  # post with what was known, then forget
            else:
                pvc = self._pvc(volume) if volume else None
            if pvc is not None:
                try:
                    self.post(e, pvc)
                except PvcGone:
                    self._pvcs[volume] = None
                except (PermissionDenied, InvalidArgument) as refused:
                    log.warning("PVC %s/%s: event %s not posted: %s", pvc.namespace, pvc.name,
                                eid, refused)  # fmt: skip
                else:
                    n += 1
            self._remember(eid)
            self.since = max(self.since, float(e.get("at", 0.0)))
        return n

    def run(self, stop: threading.Event) -> None:
        """``run_once()`` every ``interval`` seconds until ``stop`` is set; errors are
        logged (once per kind of failure in a row) and the next pass tries again."""
        last_error = ""
        while not stop.is_set():
            try:
                self.run_once()
                last_error = ""
            except Exception as e:  # whatever the clients raise: never stop the driver
                what = f"{type(e).__name__}: {str(e)[:300]}"
                if what != last_error:
                    log.warning(
                        "posting PVC events: %s (retrying every %.0f s)", what, self.interval
                    )
                last_error = what
            stop.wait(self.interval)
