"""The event log's policy (control/event_log.py): pruning per volume and overall, and what
a query returns; and the repository pruning its store with it."""

from __future__ import annotations

from cargohold.control.event_log import prune, select
from cargohold.control.model import Event, EventKind
from cargohold.control.repository import Repository
from cargohold.control.state import open_store


def test_prune_keeps_each_volumes_newest_then_the_newest_overall() -> None:
    # oldest first: a flapping volume "hot" with 10 events among others
    events = [(f"{i:03d}", "hot" if i % 2 else ("" if i % 3 else "calm")) for i in range(20)]
    doomed = prune(events, per_volume=3, overall=100)
    hot = [e for e, v in events if v == "hot"]
    calm = [e for e, v in events if v == "calm"]
    assert len(hot) == 10 and len(calm) == 4
    assert set(doomed) == set(hot[:-3] + calm[:-3])  # each volume's oldest; no-volume ones kept
    doomed = prune(events, per_volume=3, overall=5)
    kept = [e for e, _ in events if e not in doomed]
    assert len(kept) == 5 and kept == sorted(kept)
    assert kept == [e for e, _ in events if e not in prune(events, 3, 100)][-5:]  # the newest
    assert prune([], 1, 1) == []
    assert prune(events, per_volume=100, overall=100) == []
    assert prune(events, per_volume=100, overall=19) == ["000"]


def _ev(i: int, volume: str) -> Event:
    return Event(
        id=f"{i:03d}", at=float(i), kind=EventKind.VOLUME_CREATED, message="m", volume=volume
    )


def test_select_by_volume_since_and_limit() -> None:
    events = [_ev(i, "a" if i % 2 else "b") for i in range(10)]
    assert [e.id for e in select(events, "a")] == ["001", "003", "005", "007", "009"]
    assert [e.id for e in select(events, since=7.0)] == ["008", "009"]
    assert [e.id for e in select(events, "b", limit=2)] == ["006", "008"]  # the newest, in order
    assert select(events, "nobody") == []


async def test_the_repository_prunes_per_volume_and_overall() -> None:
    repo = Repository(open_store("memory:"))
    for i in range(30):
        await repo.add_event(EventKind.REPLICA_FAILED, f"e{i}", volume="hot")
    for i in range(5):
        await repo.add_event(EventKind.VOLUME_CREATED, f"c{i}", volume=f"v{i}")
    import cargohold.control.event_log as log

    old = log.PER_VOLUME
    log.PER_VOLUME = 10
    try:
        assert await repo.trim_events(keep=100) == 20
    finally:
        log.PER_VOLUME = old
    left = await repo.events()
    assert [e.message for e in left if e.volume == "hot"] == [f"e{i}" for i in range(20, 30)]
    assert len(left) == 15
    assert repo.events_recorded["replica-failed"] == 30
