"""PVC events (csi/pvc_events.py): the mapping of a manager event onto a core/v1 Event,
and the loop against a fake manager and a fake Kubernetes API."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cargohold.csi import pvc_events as E
from cargohold.errors import (
    AlreadyExists,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
    PermissionDenied,
)

T0 = 1_800_000_000.0
PVC = E.Pvc("shop", "data", "uid-1")


def ev(n: int, kind: str, volume: str = "pvc-1", msg: str = "", at: float | None = None) -> dict:
    return {
        "id": f"{int((T0 + n) * 1e9):020d}-{n:04x}",
        "at": T0 + n if at is None else at,
        "kind": kind,
        "message": msg or kind.replace("-", " "),
        "node": "node-1",
        "volume": volume,
        "replica": "",
    }


class FakeManager:
    def __init__(self) -> None:
        self.log: list[dict] = []
        self.vols: dict[str, dict] = {
            "pvc-1": {"labels": {E.PVC_NAMESPACE_LABEL: "shop", E.PVC_NAME_LABEL: "data"}},
            "pvc-2": {"labels": {}},  # made without --extra-create-metadata
            "pvc-3": {"labels": {E.PVC_NAMESPACE_LABEL: "shop", E.PVC_NAME_LABEL: "gone"}},
        }
        self.queries: list[float | None] = []
        self.down = False

    def events(self, volume: str | None = None, since: float | None = None, limit=None) -> list:
        if self.down:
            raise ManagerUnavailable("the manager is not reachable")
        self.queries.append(since)
        return [e for e in self.log if since is None or e["at"] > since]

    def volume(self, name: str) -> dict:
        if name not in self.vols:
            raise NotFound(f"volume {name} does not exist")
        return self.vols[name]


class FakeKube:
    """The API server's answers that matter: names are unique (409), PVCs may be gone."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict] = {}
        self.pvcs = {("shop", "data"): "uid-1"}
        self.calls: list[str] = []

    def pvc_uid(self, namespace: str, name: str) -> str:
        self.calls.append(f"get {namespace}/{name}")
        if (namespace, name) not in self.pvcs:
            raise E.PvcGone(name)
        return self.pvcs[(namespace, name)]

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        key = (namespace, body["metadata"]["name"])
        self.calls.append(f"create {key[1]}")
        if key in self.events:
            raise AlreadyExists(key[1])
        self.events[key] = dict(body)

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(f"patch {name}")
        if (namespace, name) not in self.events:
            raise E.EventGone(name)
        self.events[(namespace, name)].update(body)


def loop(mgr: FakeManager, kube: FakeKube) -> E.PvcEvents:
    return E.PvcEvents(mgr, kube, instance="node-1", clock=lambda: T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "reason", "type_"),
    [
        ("volume-created", "VolumeCreated", "Normal"),
        ("volume-attached", "VolumeAttached", "Normal"),
        ("replica-failed", "ReplicaFailed", "Warning"),
        ("rebuild-finished", "RebuildFinished", "Normal"),
        ("scrub-found-rot", "ScrubFoundRot", "Warning"),
        ("backup-failed", "BackupFailed", "Warning"),
        ("backup-done", "BackupDone", "Normal"),
    ],
)
def test_kind_becomes_reason_and_type(kind: str, reason: str, type_: str) -> None:
    body = E.to_k8s_event(ev(1, kind), PVC)
    assert (body["reason"], body["type"]) == (reason, type_)


def test_the_event_is_on_the_pvc_named_by_the_event_id() -> None:
    e = ev(7, "replica-failed", msg="replica failed: connection reset")
    body = E.to_k8s_event(e, PVC, instance="node-1")
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "shop",
        "name": "data",
        "uid": "uid-1",
    }
    assert body["metadata"] == {"name": f"data.cargohold.{e['id']}", "namespace": "shop"}
    assert body["message"] == "replica failed: connection reset (volume pvc-1)"
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2027-01-15T08:00:07Z"
    assert body["count"] == 1 and body["source"] == {"component": "cargohold", "host": "node-1"}


def test_the_loop_posts_each_event_once_on_its_pvc() -> None:
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [ev(1, "volume-created"), ev(2, "volume-attached"), ev(3, "volume-created", "pvc-2")]
    lp = loop(mgr, kube)
    assert lp.run_once() == 2
    assert sorted(b["reason"] for b in kube.events.values()) == ["VolumeAttached", "VolumeCreated"]
    assert lp.run_once() == 0  # nothing new: nothing posted again
    mgr.log.append(ev(4, "replica-failed", msg="replica failed: gone"))
    assert lp.run_once() == 1
    assert len(kube.events) == 3
    assert kube.calls.count("get shop/data") == 1  # the PVC is looked up once
    # each query reaches a little behind the newest event seen (ties on the clock)
    assert mgr.queries[0] == T0 - E.LOOKBACK - E.OVERLAP
    assert mgr.queries[-1] == T0 + 3 - E.OVERLAP  # event 3 (skipped) counts too


def test_a_second_poster_is_refused_by_name_and_skips() -> None:
    """A restarted controller (or the other replica) reads the same events: the API
    server refuses the names it already has, and nothing is duplicated."""
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [ev(1, "volume-created"), ev(2, "volume-attached")]
    loop(mgr, kube).run_once()
    again = loop(mgr, kube)
    assert again.run_once() == 2  # handled (refused as existing), not re-created
    assert len(kube.events) == 2 and all(b["count"] == 1 for b in kube.events.values())


def test_a_repeat_counts_on_the_first_event() -> None:
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [ev(i, "replica-failed", msg="replica failed: connection refused") for i in (1, 5, 9)]
    loop(mgr, kube).run_once()
    assert len(kube.events) == 1
    (body,) = kube.events.values()
    assert body["count"] == 3
    assert (body["firstTimestamp"], body["lastTimestamp"]) == (
        "2027-01-15T08:00:01Z",
        "2027-01-15T08:00:09Z",
    )


def test_a_repeat_of_an_expired_event_starts_a_new_one() -> None:
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [ev(1, "replica-failed", msg="same")]
    lp = loop(mgr, kube)
    lp.run_once()
    kube.events.clear()  # the API server's event TTL
    mgr.log.append(ev(2, "replica-failed", msg="same"))
    assert lp.run_once() == 1
    (body,) = kube.events.values()
    assert body["count"] == 1 and body["metadata"]["name"].endswith(mgr.log[1]["id"])


def test_unlabelled_unknown_and_gone_volumes_are_skipped() -> None:
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [
        ev(1, "volume-created", "pvc-2"),  # no labels
        ev(2, "volume-created", "pvc-9"),  # deleted before it was seen
        ev(3, "volume-created", "pvc-3"),  # its PVC is gone
        {**ev(4, "cluster-created"), "volume": ""},  # no volume at all
    ]
    assert loop(mgr, kube).run_once() == 0
    assert kube.events == {}


def test_the_deleted_event_still_reaches_the_pvc() -> None:
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [ev(1, "volume-created")]
    lp = loop(mgr, kube)
    lp.run_once()
    del mgr.vols["pvc-1"]
    mgr.log.append(ev(2, "volume-deleted"))
    assert lp.run_once() == 1
    assert {b["reason"] for b in kube.events.values()} == {"VolumeCreated", "VolumeDeleted"}


def test_run_survives_a_manager_that_is_down() -> None:
    mgr, kube = FakeManager(), FakeKube()
    mgr.down = True
    mgr.log = [ev(1, "volume-created")]
    lp = E.PvcEvents(mgr, kube, interval=0.01, clock=lambda: T0)  # type: ignore[arg-type]
    stop = threading.Event()
    t = threading.Thread(target=lp.run, args=(stop,), daemon=True)
    t.start()
    stop.wait(0.05)
    mgr.down = False
    deadline = threading.Event()
    for _ in range(500):
        if kube.events:
            break
        deadline.wait(0.01)
    stop.set()
    t.join(5)
    assert not t.is_alive() and len(kube.events) == 1


def test_a_refused_event_is_skipped_and_the_others_go_on() -> None:
    """One event the API server will never take (a namespace being deleted, a 422) must
    not hold up the events after it; an unreachable API server stops the pass instead."""
    mgr, kube = FakeManager(), FakeKube()
    mgr.log = [ev(1, "volume-created"), ev(2, "volume-attached"), ev(3, "snapshot-created")]
    create = kube.create

    def picky(namespace: str, body: dict[str, Any]) -> None:
        if body["reason"] == "VolumeAttached":
            raise InvalidArgument("event shop/x: 422 Event.v1 is invalid")
        create(namespace, body)

    kube.create = picky  # type: ignore[method-assign]
    lp = loop(mgr, kube)
    assert lp.run_once() == 2
    assert {b["reason"] for b in kube.events.values()} == {"VolumeCreated", "SnapshotCreated"}
    assert lp.run_once() == 0  # not retried for ever

    def down(namespace: str, body: dict[str, Any]) -> None:
        raise E.KubeUnavailable("event shop/x: 503 the server is shutting down")

    kube.create = down  # type: ignore[method-assign]
    mgr.log.append(ev(4, "rebuild-started"))
    with pytest.raises(E.KubeUnavailable):
        lp.run_once()
    kube.create = create  # type: ignore[method-assign]
    assert lp.run_once() == 1  # the next pass posts what the failed one could not


class _ApiException(Exception):
    def __init__(self, status: int, body: str = "") -> None:
        self.status, self.body, self.reason = status, body, "reason"


@pytest.mark.parametrize(
    ("status", "body", "want"),
    [
        (404, "", E.PvcGone),
        (403, '{"reason": "Forbidden", "causes": [{"reason": "NamespaceTerminating"}]}', E.PvcGone),
        (403, '{"message": "events is forbidden: User cannot create"}', PermissionDenied),
        (409, "", AlreadyExists),
        (422, '{"message": "Event is invalid"}', InvalidArgument),
        (429, "", E.KubeUnavailable),
        (503, "", E.KubeUnavailable),
    ],
)
def test_the_api_servers_answers_map_onto_the_error_tree(
    status: int, body: str, want: type
) -> None:
    from cargohold.csi.kube_events import refused

    err = refused(_ApiException(status, body), E.PvcGone, "PVC shop/data")  # type: ignore[arg-type]
    assert type(err) is want and str(status) in str(err)
