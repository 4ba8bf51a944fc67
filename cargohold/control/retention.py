"""Which snapshots or backups a recurring job keeps (pure: no I/O, no clock).

``keep(items, policy)`` takes the job's objects of one volume, each an ``Item`` (id, created
time, labels), and a ``Policy``, and returns the ids to keep; the rest are the ones to
delete. The rules are restic's ``forget`` (grandfather-father-son), unioned:

- ``keep_last N``: the N newest;
- ``keep_within S``: every item created at most S seconds before the newest one (measured
  from the newest item, not from the clock, so that a cluster that was down for a month
  does not wake up and delete everything);
- ``hourly/daily/weekly/monthly/yearly N``: walking from the newest to the oldest, the newest
  item of each of the N most recent hours (days, ISO weeks, months, years) that hold one.
  Buckets are in UTC.

The newest item is always kept. A policy that keeps nothing (no rule set) is refused with
``InvalidArgument``: an empty policy would delete everything but the newest, which nobody
means. Applying ``keep`` to what it kept keeps all of it (idempotent: a second pass deletes
nothing more). Called by the recurring-job runner (job_runner.py) after each successful run,
and by ``check_policy`` when a job is created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cargohold.errors import InvalidArgument


@dataclass(frozen=True)
class Item:
    id: str
    created: float  # seconds since the epoch
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_within: float | None = None  # seconds before the newest item
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def rules(self) -> dict[str, int | float]:
        """The rules set (not None), by name."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _week(t: float) -> tuple[int, int]:
    iso = _utc(t).isocalendar()
    return iso.year, iso.week


BUCKETS: dict[str, Callable[[float], object]] = {
    "hourly": lambda t: _utc(t).strftime("%Y-%m-%d %H"),
    "daily": lambda t: _utc(t).strftime("%Y-%m-%d"),
    "weekly": _week,
    "monthly": lambda t: _utc(t).strftime("%Y-%m"),
    "yearly": lambda t: _utc(t).year,
}


def check_policy(policy: Policy) -> Policy:
    """``policy``, or InvalidArgument saying why it is refused."""
    rules = policy.rules()
    if not rules:
        raise InvalidArgument(
            "a retention policy must keep something: set keep_last, keep_within or one of "
            "hourly, daily, weekly, monthly, yearly"
        )
    for name, value in rules.items():
        if name == "keep_within":
            if not value > 0:
                raise InvalidArgument(f"keep_within must be a positive duration, not {value}")
        elif not (isinstance(value, int) and value >= 1):
            raise InvalidArgument(f"{name} must be a count of at least 1, not {value!r}")
    return policy


def newest_first(items: Iterable[Item]) -> list[Item]:
    """Newest first; equal times ordered by id (so every pass agrees)."""
    return sorted(items, key=lambda i: (-i.created, i.id))


def keep(items: Iterable[Item], policy: Policy) -> set[str]:
    """The ids of ``items`` that ``policy`` keeps (module docstring)."""
    check_policy(policy)
    ordered = newest_first(items)
    if not ordered:
        return set()
    kept = {ordered[0].id}  # never the newest
    if policy.keep_last is not None:
        kept.update(i.id for i in ordered[: policy.keep_last])
    if policy.keep_within is not None:
        horizon = ordered[0].created - policy.keep_within
        kept.update(i.id for i in ordered if i.created >= horizon)
    for name, bucket_of in BUCKETS.items():
        count = getattr(policy, name)
        if count is None:
            continue
        last: object = None
        for i in ordered:
            if count <= 0:
                break
            b = bucket_of(i.created)
            if b != last:
                kept.add(i.id)
                last = b
                count -= 1
    return kept


def to_delete(items: Iterable[Item], policy: Policy) -> list[Item]:
    """The items ``policy`` does not keep, oldest first (the order they are deleted in)."""
    items = list(items)
    kept = keep(items, policy)
    return [i for i in reversed(newest_first(items)) if i.id not in kept]
