"""Holding a volume's writes for a group snapshot: the engine side of a crash-consistent
snapshot of several volumes (``control/group_snapshots.py`` drives the group).

Called by ``control`` (the engine's control ops ``hold``, ``release`` and ``snapshot`` with
``hold``). ``hold`` (``group``, ``seconds``) holds new mutations, waits for those in flight
to be answered, and answers once the volume is held; the hold stays after the answer, until
``release`` (``group``) or until ``seconds`` have passed, when it releases itself (so that a
manager that dies mid-group never leaves a volume frozen). While it is held, a snapshot that
names the hold is taken inside it (``snapshots.create(..., hold=GROUP)``), and a deadline
that passes during such a snapshot waits for it. A snapshot that names a hold that is not
(or no longer) in place fails: the group then fails as a whole.

A hold is idempotent (the same group again: the same hold); a volume holds for one group
at a time (another group: Busy). ``status`` shows it under ``hold``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cargohold.engine.replica_link import Mode
from cargohold.engine.volume import Volume
from cargohold.errors import Busy, InvalidArgument, WrongState

log = logging.getLogger("cargohold.engine")

MAX_HOLD_SECONDS = 120.0  # the longest a group may freeze a volume's writes


@dataclass
class Hold:
    """One group's hold of one volume."""

    group: str
    seconds: float
    state: str = "holding"  # holding -> held -> released | expired | failed
    since: float = field(default_factory=time.time)
    deadline: float = 0.0  # monotonic
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    users: int = 0  # snapshots being taken inside the hold
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return self.state in ("holding", "held")

    def info(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "state": self.state,
            "since": self.since,
            "seconds": self.seconds,
            "remaining": round(max(0.0, self.deadline - time.monotonic()), 3)
            if self.state == "held"
            else 0.0,
        }


_HOLDS: dict[int, Hold] = {}  # id(volume) -> its hold (one engine process: one volume)


def current(vol: Volume) -> Hold | None:
    return _HOLDS.get(id(vol))


def status(vol: Volume) -> dict[str, Any] | None:
    h = current(vol)
    return h.info() if h is not None else None


def check_group(group: Any) -> str:
    if not isinstance(group, str) or not group or len(group) > 253:
        raise InvalidArgument("group (the group snapshot's name, a string) is required")
    return group


async def hold(vol: Volume, group: str, seconds: Any) -> dict[str, Any]:
    """Hold ``vol``'s writes for ``group`` for at most ``seconds``; -> the hold's info."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise InvalidArgument("seconds (how long the hold may last at most) must be a number")
    if not 0 < seconds <= MAX_HOLD_SECONDS:
        raise InvalidArgument(f"seconds must be in (0, {MAX_HOLD_SECONDS:g}], not {seconds}")
    old = current(vol)
    if old is not None and old.active:
        if old.group != group:
            raise Busy(f"volume {vol.name}: writes are held for group snapshot {old.group}")
        await old.held.wait()
        return old.info()
    vol.check_usable()
    if any(link.mode is Mode.WO for link in vol.links):
        raise Busy(f"volume {vol.name}: a rebuild is running; hold after it")
    h = Hold(group=group, seconds=float(seconds))
    _HOLDS[id(vol)] = h
    h.idle.set()
    vol.spawn(_keep(vol, h))
    try:
        await asyncio.wait_for(h.held.wait(), seconds)
    except TimeoutError:
        h.state = "failed"
        h.release.set()
        raise Busy(
            f"volume {vol.name}: writes in flight were not answered within {seconds} s"
        ) from None
    log.info(
        "volume %s: writes held for group snapshot %s (%g s at most)", vol.name, group, seconds
    )
    return h.info()


async def _keep(vol: Volume, h: Hold) -> None:
    async with vol.hold():
        if h.state != "holding":
            return  # given up before it was in place
        h.deadline = time.monotonic() + h.seconds
        h.state = "held"
        h.held.set()
        try:
            await asyncio.wait_for(h.release.wait(), h.seconds)
        except TimeoutError:
            await h.idle.wait()  # a snapshot inside the hold ends first
            if h.state == "held":
                h.state = "expired"
                log.warning(
                    "volume %s: the hold of group snapshot %s expired after %g s: writes resume",
                    vol.name,
                    h.group,
                    h.seconds,
                )
        else:
            await h.idle.wait()
            if h.state == "held":
                h.state = "released"


def release(vol: Volume, group: str) -> dict[str, Any]:
    """End ``group``'s hold (done already, or never held: fine)."""
    h = current(vol)
    if h is None or h.group != group:
        return {"group": group, "state": "released"}
    if h.active:
        h.state = "released" if h.state == "held" else "failed"
        h.release.set()
        log.info("volume %s: writes released by group snapshot %s", vol.name, group)
    return h.info()


@contextlib.asynccontextmanager
async def inside(vol: Volume, group: str) -> AsyncIterator[None]:
    """``async with inside(vol, group):`` the block runs while ``group``'s hold is in place
    (its deadline waits for it); WrongState when the volume is not held for ``group``."""
    h = current(vol)
    if h is None or h.group != group or h.state != "held":
        what = "no hold" if h is None or h.group != group else f"its hold is {h.state}"
        raise WrongState(
            f"volume {vol.name}: writes are not held for group snapshot {group} ({what})"
        )
    h.users += 1
    h.idle.clear()
    try:
        yield
    finally:
        h.users -= 1
        if h.users == 0:
            h.idle.set()
