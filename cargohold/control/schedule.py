"""When a recurring job runs next (pure: the caller passes the time).

A job's schedule is a five-field cron expression (minute hour day-of-month month
day-of-week; croniter's syntax, UTC). Each cron time is a *slot*. For one (job, volume):

- the run for slot ``s`` is due at ``s + jitter``, where ``jitter`` is a deterministic
  offset in ``[0, bound)`` derived from the job's and the volume's names (``jitter``), so
  a hundred volumes of one hourly job do not all start at :00, and every manager computes
  the same offsets;
- ``plan(cron, last_slot, now, jitter)`` says whether a run is due now: the newest slot whose
  due time has passed, if it is newer than the last slot run. However many slots were missed
  (the manager was down, the previous run overran) the job runs once for the newest of
  them, never once per missed slot (``Plan.missed`` counts the others, for the log).

Called by the recurring-job runner (job_runner.py); ``check_cron`` by the API when a job is
created.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from cargohold.errors import InvalidArgument

MISSED_COUNTED = 100  # missed slots counted at most (for the log; a run happens once anyway)


def check_cron(expr: str) -> str:
    """``expr`` if it is a valid five-field cron expression, else InvalidArgument."""
    if not isinstance(expr, str) or len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise InvalidArgument(
            f"cron schedule {expr!r} is not valid: use five fields, minute hour day-of-month "
            "month day-of-week, e.g. '0 * * * *' (hourly) or '30 2 * * *' (02:30 UTC daily)"
        )
    return expr


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _minute(t: float) -> float:
    return math.floor(t / 60) * 60.0


# Slots fall on whole minutes, so the slot after (or at or before) any time of a minute is the
# one of the minute's start: results are cached by minute (building a croniter costs ~1 ms,
# and a pass asks the same of every volume of a job).
@functools.lru_cache(maxsize=8192)
def _next(expr: str, minute: float) -> float:
    return float(croniter(expr, _dt(minute)).get_next(float))


@functools.lru_cache(maxsize=8192)
def _prev(expr: str, minute: float) -> float:
    before = float(croniter(expr, _dt(minute)).get_prev(float))  # strictly before
    after = _next(expr, before)
    return after if after <= minute else before


@functools.lru_cache(maxsize=8192)
def _missed(expr: str, minute: float, latest: float) -> int:
    """Slots after ``minute`` and before ``latest`` (at most MISSED_COUNTED)."""
    missed = 0
    it = croniter(expr, _dt(minute))  # one iterator for all of them
    while float(it.get_next(float)) < latest and missed < MISSED_COUNTED:
        missed += 1
    return missed


def next_slot(expr: str, after: float) -> float:
    """The first slot strictly after ``after``."""
    return _next(expr, _minute(after))


def prev_slot(expr: str, at: float) -> float:
    """The newest slot at or before ``at``."""
    return _prev(expr, _minute(at))


def period(expr: str, after: float) -> float:
    """The gap between the two slots after ``after`` (the schedule's period there)."""
    a = next_slot(expr, after)
    return next_slot(expr, a) - a


def jitter(job: str, volume: str, bound: float) -> float:
    """A deterministic offset in ``[0, bound)`` for (job, volume)."""
    if bound <= 0:
        return 0.0
    h = hashlib.sha256(f"{job}\0{volume}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * bound


def jitter_bound(expr: str, max_jitter: float, after: float) -> float:
    """At most ``max_jitter``, and at most a quarter of the period (an every-minute job
    is not delayed by a minute)."""
    return max(0.0, min(max_jitter, period(expr, after) / 4))


@dataclass(frozen=True)
class Plan:
    due: bool  # run now
    slot: float | None  # the slot the run is for (when due)
    next_due: float  # when the next run is due (after this one, when due)
    missed: int  # slots skipped by catching up once (when due)


def plan(expr: str, last_slot: float, now: float, offset: float = 0.0) -> Plan:
    """Is a run due at ``now``, given the last slot run (or the job's creation time for a
    job that never ran) and this (job, volume)'s ``offset`` (``jitter``)? See the module."""
    latest = prev_slot(expr, now - offset)
    if latest > last_slot:
        missed = _missed(expr, _minute(last_slot), latest)
        return Plan(True, latest, next_slot(expr, latest) + offset, missed)
    return Plan(False, None, next_slot(expr, max(last_slot, latest)) + offset, 0)
