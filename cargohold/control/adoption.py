"""Adoption: turning orphaned replicas back into a volume after its records were lost.

Called by ``service`` for ``POST /api/v1/orphans/adopt`` (``cargohold volume adopt``). A
pure function: the orphans the agents reported (replicas on disk with no record, with the
epoch history, generations, size and snapshots each persisted), in, a plan out — which
replicas become the volume's, which of them are current, what the volume's epoch and
generation floor are, and what is left out and why. The service writes the plan.

The rules are the engine's (``cargohold.lineage``): the replicas whose (last epoch,
generation) is highest are current; the others are stale and are rebuilt by the first
engine. Adoption refuses, saying why, whenever guessing could lose acknowledged writes:

- replicas stamped with another cluster's id are never adopted (invariant 7);
- two current replicas whose histories differ: both claim the newest data, only one can
  have it (a split history), and the operator must choose (``replicas``);
- a stale replica holding mutations the current ones lack (a fork: an older engine kept
  writing to it after the others had gone on without it): the first engine would clear it
  with a full rebuild. Refused unless the operator accepts it (``accept_fork``); even then
  the forked replica is not adopted but left as an orphan, so its data stays on disk.

Nothing here deletes anything: what is not adopted stays an orphan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator

from cargohold import lineage
from cargohold.control.model import (
    EventKind,
    Replica,
    Snapshot,
    SnapshotState,
    Volume,
    check_name,
    name_field,
)
from cargohold.control.repository import now
from cargohold.errors import AlreadyExists, NotFound, WrongState

if TYPE_CHECKING:
    from cargohold.control.repository import Repository

log = logging.getLogger("cargohold.manager")


class AdoptRequest(BaseModel):
    """``POST /api/v1/orphans/adopt``: recreate a volume's records from its orphans."""

    model_config = {"extra": "forbid"}

    volume: str = name_field()
    replicas: list[str] = Field(
        default_factory=list, description="adopt only these orphan replica ids (default: all)"
    )
    accept_fork: StrictBool = Field(
        default=False,
        description="adopt even when some replicas' histories fork; those stay orphans",
    )
    replicas_wanted: StrictInt | None = Field(
        default=None,
        ge=1,
        le=16,
        description="replicas the volume should have (default: as adopted)",
    )
    dry_run: StrictBool = Field(default=False, description="answer the plan, write nothing")
    tenant: str | None = name_field(
        default=None,
        description="the tenant whose volume it was (replicas do not record it; null: the "
        "provider's own)",
    )

    @field_validator("volume", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "volume name") if isinstance(v, str) else v


class OrphanLike(Protocol):
    """What adoption reads of an orphan record (``model.Orphan``)."""

    id: str
    volume: str
    node: str
    disk_path: str
    size_bytes: int
    generation: int
    seen: int
    epoch: int
    history: list[list[int]]
    snapshots: list[str]
    cluster_id: str


class AdoptedReplica(BaseModel):
    id: str
    node: str
    disk_path: str
    size_bytes: int
    generation: int
    last_epoch: int
    role: str  # current | stale


class LeftOut(BaseModel):
    id: str
    node: str
    reason: str


class AdoptionPlan(BaseModel):
    """What adopting a volume's orphans does (the answer of a dry run, and of the real one)."""

    volume: str
    size_bytes: int
    epoch: int  # the highest epoch any adopted replica is fenced at: the next engine's is above
    current_epoch: int  # the newest (epoch, generation) the current replicas hold: the floor
    current_generation: int  # every later engine must meet (invariant 4)
    replicas: list[AdoptedReplica] = Field(default_factory=list)
    left_out: list[LeftOut] = Field(default_factory=list)
    snapshots: list[str] = Field(default_factory=list)  # on every current replica
    partial_snapshots: list[str] = Field(default_factory=list)  # on some only: not recorded
    dry_run: bool = False


def plan_adoption(
    volume: str,
    orphans: Sequence[OrphanLike],
    cluster_id: str,
    *,
    only: Sequence[str] = (),
    accept_fork: bool = False,
) -> AdoptionPlan:
    """The plan to adopt ``volume`` from its ``orphans``; raises when it must not be done.

    ``only``: adopt just these replica ids (the operator's choice after a refusal); the
    others of the volume are left out. ``cluster_id``: this cluster's; an orphan stamped
    with another is left out, and adoption fails if none remains. An unstamped orphan
    (written before replicas carried a cluster id) counts as this cluster's.
    """
    mine = [o for o in orphans if o.volume == volume]
    if not mine:
        raise NotFound(f"no orphaned replica of volume {volume!r} is reported by any node")
    left: list[LeftOut] = []
    if only:
        unknown = sorted(set(only) - {o.id for o in mine})
        if unknown:
            raise NotFound(
                f"volume {volume}: no orphaned replica {', '.join(unknown)} "
                f"(orphans: {', '.join(sorted(o.id for o in mine))})"
            )
        left += [
            LeftOut(id=o.id, node=o.node, reason="not chosen") for o in mine if o.id not in only
        ]
        mine = [o for o in mine if o.id in only]
    ours = []
    for o in mine:
        if o.cluster_id and o.cluster_id != cluster_id:
            left.append(
                LeftOut(
                    id=o.id,
                    node=o.node,
                    reason=f"belongs to cluster {o.cluster_id}, not this one ({cluster_id})",
                )
            )
        else:
            ours.append(o)
    if not ours:
        raise WrongState(
            f"volume {volume}: none of its orphaned replicas belongs to this cluster: "
            + "; ".join(f"{x.id} on {x.node}: {x.reason}" for x in left)
        )
    top = max(lineage.rank(o.history, o.generation) for o in ours)
    current = [o for o in ours if lineage.rank(o.history, o.generation) == top]
    histories = {_key(o.history) for o in current}
    if len(histories) > 1:
        raise WrongState(
            f"volume {volume}: its newest replicas disagree on their history, so which one "
            f"holds the acknowledged writes cannot be decided: "
            + "; ".join(_describe(o) for o in current)
            + ". Adopt one of them with --replica ID (the others stay orphans)."
        )
    ref = max(current, key=lambda o: o.seen)
    adopted: list[AdoptedReplica] = [_adopted(o, "current") for o in current]
    forks: list[OrphanLike] = []
    for o in ours:
        if o in current:
            continue
        if lineage.contained(o.history, o.seen, ref.history, ref.seen):
            adopted.append(_adopted(o, "stale"))
        else:
            forks.append(o)
    if forks and not accept_fork:
        raise WrongState(
            f"volume {volume}: replica(s) {', '.join(o.id for o in forks)} hold writes the "
            f"newest replicas do not have (their histories fork: "
            + "; ".join(_describe(o) for o in [*forks, ref])
            + "). Adopting would discard them with a full rebuild. Read them first if they "
            "matter; --accept-fork adopts the others and leaves these as orphans."
        )
    left += [
        LeftOut(id=o.id, node=o.node, reason="its history forks from the current replicas'")
        for o in forks
    ]
    on_all = set(current[0].snapshots)
    for o in current[1:]:
        on_all &= set(o.snapshots)
    on_some = set().union(*(set(o.snapshots) for o in current)) - on_all
    return AdoptionPlan(
        volume=volume,
        size_bytes=max(o.size_bytes for o in current),
        epoch=max(max(o.epoch, lineage.last_epoch(o.history)) for o in ours),
        current_epoch=top[0],
        current_generation=top[1],
        replicas=sorted(adopted, key=lambda r: (r.role != "current", r.node, r.id)),
        left_out=sorted(left, key=lambda x: (x.node, x.id)),
        snapshots=sorted(on_all),
        partial_snapshots=sorted(on_some),
    )


def _key(history: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in x) for x in history)


def _adopted(o: OrphanLike, role: str) -> AdoptedReplica:
    return AdoptedReplica(
        id=o.id,
        node=o.node,
        disk_path=o.disk_path,
        size_bytes=o.size_bytes,
        generation=o.generation,
        last_epoch=lineage.last_epoch(o.history),
        role=role,
    )


def _describe(o: OrphanLike) -> str:
    return (
        f"{o.id} on {o.node}: history {[list(x) for x in o.history]}, generation "
        f"{o.generation}, newest mutation {o.seen}"
    )


def check_adoptable(volume: str, existing: Sequence[str]) -> None:
    """Adoption recreates a volume's records; it never merges into a volume that has them."""
    if volume in existing:
        raise AlreadyExists(
            f"volume {volume} exists: adoption only recreates a volume whose records are lost"
        )


async def adopt(repo: Repository, req: AdoptRequest) -> AdoptionPlan:
    """Plan, and unless ``dry_run`` write: the volume (detached, reclaim policy ``Retain``:
    what came back from a disaster is not deleted by a slip), its adopted replicas, the
    snapshots every current replica holds. The orphan records of the adopted replicas go
    at their node's next heartbeat (a record names them now); the rest stay orphans."""
    check_adoptable(req.volume, [v.name for v in await repo.volumes()])
    if req.tenant is not None:
        await repo.tenant(req.tenant)  # NotFound: recreate the tenant first
    plan = plan_adoption(
        req.volume,
        await repo.orphans(None),
        repo.cluster_id,
        only=req.replicas,
        accept_fork=req.accept_fork,
    )
    if req.dry_run:
        return plan.model_copy(update={"dry_run": True})
    disks = {(d.node, os.path.abspath(d.path)): d.name for d in await repo.disks()}
    t = now()
    vol = Volume(
        name=plan.volume,
        size_bytes=plan.size_bytes,
        replicas_wanted=req.replicas_wanted or len(plan.replicas),
        reclaim_policy="Retain",
        created_at=t,
        epoch=plan.epoch,
        current_epoch=plan.current_epoch,
        current_generation=plan.current_generation,
        tenant=req.tenant,
    )
    replicas = [
        Replica(
            id=r.id,
            volume=plan.volume,
            node=r.node,
            disk=_disk_name(disks, r.node, r.disk_path),
            disk_path=r.disk_path,
            size_bytes=plan.size_bytes,
            created_at=t,
            exists=True,
            generation=r.generation,
        )
        for r in plan.replicas
    ]
    await repo.create_volume(vol, replicas)
    for name in plan.snapshots:
        await repo.put_snapshot(
            Snapshot(volume=plan.volume, name=name, state=SnapshotState.READY, created_at=t)
        )
    what = (
        f"volume {plan.volume} adopted from {len(replicas)} orphan replica(s) "
        f"({', '.join(f'{r.id} on {r.node} ({r.role})' for r in plan.replicas)}); current at "
        f"epoch {plan.current_epoch}, generation {plan.current_generation}"
    )
    log.warning("%s", what)
    await repo.add_event(EventKind.VOLUME_ADOPTED, what, volume=plan.volume)
    return plan


def _disk_name(disks: dict[tuple[str, str], str], node: str, path: str) -> str:
    """The node's disk that holds ``path`` (a replica's disk directory), by its record; else
    the directory's base name, as the agent names an unknown disk."""
    return (
        disks.get((node, os.path.abspath(path))) or os.path.basename(path.rstrip("/")) or "disk-0"
    )
