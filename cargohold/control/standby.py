"""A standby volume's decisions (docs/disaster-recovery.md), pure: no I/O, no clock.

The follower (standby_follower.py) reads the target's catalog, the standby's record and its
running operation; ``finish`` says what a step that ended made complete, ``next_step`` what
to do now; the follower carries the step out. ``source_backups`` picks the source's backups out of a catalog;
``lag`` says how far behind the standby is. The steps of one apply are: RESTORE with the last
complete backup as ``base`` (only what differs is written), then a snapshot that seals the
new state ("complete" means: a ready snapshot holds it); an apply that failed, or blocks
written after the last seal for any reason (``dirty``), are reverted to that snapshot before
anything else happens (the next apply, or activation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cargohold.control.model import Standby, StandbyState

OpState = Literal["none", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class SourceBackup:
    """One backup of the source volume, as the catalog lists it."""

    id: str
    created: float
    size: int
    volume_id: str


@dataclass(frozen=True)
class Step:
    """What to do now. ``kind``:

    - ``wait``: nothing (an operation runs, or nothing newer);
    - ``apply``: RESTORE ``backup`` over ``base`` ("" : a full restore);
    - ``seal``: snapshot ``snapshot`` (the applied backup becomes the complete state);
    - ``revert``: revert to ``snapshot`` (the last complete state);
    - ``activate``: the standby becomes a normal volume now.
    """

    kind: Literal["wait", "apply", "seal", "revert", "activate"]
    backup: str = ""
    base: str = ""
    snapshot: str = ""
    created: float = 0.0


WAIT = Step("wait")


def source_backups(infos: Iterable[Mapping[str, Any]], sb: Standby) -> list[SourceBackup]:
    """The source volume's backups in a catalog, oldest first. A backup is the source's
    when its volume name matches and, once the standby knows the source's uid, its uid too
    (a source deleted and made again under the same name is another volume)."""
    out = []
    for i in infos:
        if i.get("volume") != sb.source_volume:
            continue
        vid = str(i.get("volume_id") or "")
        if sb.source_volume_id and vid != sb.source_volume_id:
            continue
        created = i.get("created")
        out.append(
            SourceBackup(
                id=str(i.get("id", "")),
                created=float(created) if isinstance(created, int | float) else 0.0,
                size=int(i.get("size") or 0),
                volume_id=vid,
            )
        )
    return sorted((b for b in out if b.id), key=lambda b: (b.created, b.id))


def behind(backups: list[SourceBackup], applied_created: float, applied: str) -> int:
    """How many of the source's backups are newer than the applied one."""
    if not applied:
        return len(backups)
    return sum(1 for b in backups if (b.created, b.id) > (applied_created, applied))


def lag(sb: Standby, now: float) -> dict[str, Any]:
    """The numbers a dashboard shows (the volume's API view):

    - ``seconds``: how much older the applied backup is than the source's newest (0 in sync);
    - ``data_age_seconds``: how old the standby's data is (now minus the applied backup's
      time): what would be lost if the source were lost now and no newer backup came;
    - ``backups``: backups of the source not applied yet;
    - ``since_poll_seconds``: since the catalog was last read (grows while the target is
      unreachable).
    None where not known yet (no backup applied, never polled)."""
    applied = bool(sb.applied)
    return {
        "seconds": max(0.0, sb.newest_created - sb.applied_created) if applied else None,
        "data_age_seconds": max(0.0, now - sb.applied_created) if applied else None,
        "backups": sb.behind,
        "since_poll_seconds": max(0.0, now - sb.last_poll) if sb.last_poll else None,
    }


def seal_name(sb: Standby, unique: str) -> str:
    """The snapshot that seals the next apply (``unique``: a seal that failed left its name)."""
    return f"dr-{sb.applies + 1}-{unique}"


def finish(sb: Standby, op: OpState) -> Standby:
    """The record once the running step's operation ended as ``op``: what is complete now.
    A RESTORE that succeeded stays the phase (``next_step`` seals it next); a failed
    restore or seal leaves the volume ``dirty`` (it is reverted next); a seal that
    succeeded makes the applied backup the complete state."""
    if not sb.phase or op not in ("succeeded", "failed"):
        return sb
    if sb.phase == "restore" and op == "succeeded":
        return sb
    out = sb.model_copy(deep=True)
    if out.phase == "seal" and op == "succeeded":
        out.applied, out.applied_created = out.applying, out.applying_created
        out.applied_snapshot = out.snapshot
        out.applies += 1
    if op == "succeeded":  # a seal or a revert: the volume holds applied_snapshot's state
        out.applying, out.applying_created = "", 0.0
        out.dirty = False
    out.phase, out.operation, out.snapshot = "", "", ""
    if out.state is StandbyState.APPLYING:
        out.state = StandbyState.FOLLOWING
    return out


def next_step(sb: Standby, newest: SourceBackup | None, op: OpState) -> Step:
    """The one decision (the module's docstring), on a record ``finish`` has seen;
    ``op``: the state of ``sb.operation``."""
    if sb.state is StandbyState.ACTIVE:
        return WAIT
    if sb.phase:
        if sb.phase == "restore" and op == "succeeded":
            return Step("seal", backup=sb.applying, snapshot=seal_name(sb, sb.operation[-6:]))
        return WAIT  # its operation runs: activation too waits (never two writers)
    if sb.dirty:
        return Step("revert", snapshot=sb.applied_snapshot) if sb.applied_snapshot else WAIT
    if sb.state is StandbyState.ACTIVATING:
        return Step("activate")
    if newest is not None and (newest.created, newest.id) > (sb.applied_created, sb.applied):
        return Step("apply", backup=newest.id, base=sb.applied, created=newest.created)
    return WAIT


def activatable(sb: Standby) -> str:
    """Why the standby cannot be activated ("" when it can)."""
    if sb.state is StandbyState.ACTIVE:
        return "it is active already"
    if not sb.applied and sb.phase != "restore":
        return "it holds no complete backup yet (its first restore failed or never ran)"
    return ""
