"""What should run on a node, as the answer to its heartbeat: its disks, the replicas it
keeps or deletes (an unknown one only on a tombstone: invariant 7), the engines of the
volumes attached there with their replica addresses, and the unfinished operations those
engines run. Computed from the desired half of the records the reconcilers write; the
``revision`` digest lets an agent that has the same answer skip it.

Called by heartbeat.py's ``handle`` and by ``Service.heartbeat`` (heartbeat_hold.py) when
a held heartbeat is woken.
"""

from __future__ import annotations

from typing import Any

from cargohold.control import key_generations
from cargohold.control.backup_repos import secrets_for_engine
from cargohold.control.deletion import Verdict, decide
from cargohold.control.digests import revision
from cargohold.control.grant_signer import GrantSigner
from cargohold.control.model import (
    Assignments,
    DiskReport,
    EngineAssignment,
    Heartbeat,
    Node,
    Operation,
    OperationAssignment,
    OperationKind,
    ReplicaAssignment,
    ReplicaMode,
    SnapshotState,
)
from cargohold.control.repository import Repository
from cargohold.control.settings import ManagerSettings
from cargohold.errors import NotFound


async def assignments(
    repo: Repository,
    name: str,
    hb: Heartbeat,
    settings: ManagerSettings,
    signer: GrantSigner | None = None,
) -> Assignments:
    nodes = {n.name: n for n in await repo.nodes()}
    volumes = {v.name: v for v in await repo.volumes()}
    all_reps = await repo.replicas()
    out = Assignments(
        heartbeat_interval=settings.heartbeat_every,
        cluster_id=repo.cluster_id,
        disks=[
            DiskReport(name=d.name, path=d.path, capacity_bytes=d.capacity_bytes, tags=d.tags)
            for d in await repo.disks(name)
        ],
    )
    for r in all_reps:
        if r.node != name:
            continue
        vol = volumes.get(r.volume)
        size = max(r.size_bytes, vol.stored_bytes if vol else 0)
        out.replicas.append(
            ReplicaAssignment(
                id=r.id, volume=r.volume, size_bytes=size, disk_path=r.disk_path, delete=r.deleting
            )
        )
    known = {r.id for r in all_reps}
    unknown = [rr for rr in hb.replicas if rr.id not in known]
    stones = {s.replica: s for s in await repo.tombstones() if s.node == name} if unknown else {}
    for rr in unknown:  # deleted only on positive evidence: a tombstone (invariant 7)
        if decide(rr, None, stones.get(rr.id), repo.cluster_id) is Verdict.DELETE:
            out.replicas.append(
                ReplicaAssignment(
                    id=rr.id,
                    volume=rr.volume,
                    size_bytes=rr.size_bytes or 4096,
                    disk_path=rr.disk_path,
                    delete=True,
                )
            )
    by_id = {r.id: r for r in all_reps}
    running_here = {e.volume: e for e in hb.engines if e.running}
    unfinished: dict[str, list[Operation]] | None = None
    for vol in volumes.values():
        eng = vol.engine
        if eng is None or eng.node != name:
            continue
        specs, local = [], None
        for rid in eng.replicas:
            rep = by_id.get(rid)
            n = nodes.get(rep.node) if rep else None
            if rep is None or n is None or not n.replica_port or rep.deleting:
                continue
            specs.append(f"{rid}@{n.address}:{n.replica_port}")
            if rep.node == name:
                local = rid
        if not specs:
            continue
        out.engines.append(
            EngineAssignment(
                volume=vol.name,
                epoch=eng.epoch,
                size_bytes=vol.stored_bytes,
                replicas=specs,
                local=local,
                require_epoch=eng.require_epoch,
                require_generation=eng.require_generation,
                purpose=eng.purpose,
                last_scrub_at=vol.last_scrub.ended_at if vol.last_scrub else 0.0,
                epoch_jump=eng.epoch_jump,
                read_only=eng.read_only,
                qos=vol.qos.limits(),
                encrypted=eng.encrypted,
                encryption_id=vol.encryption.id if vol.encryption and eng.encrypted else "",
                data_key_generation=(
                    key_generations.newest(vol.encryption) if vol.encryption else 0
                ),
                rekey=bool(
                    vol.encryption
                    and vol.encryption.rotation
                    and vol.encryption.rotation.state == "running"
                ),
                data_keys=len(vol.encryption.keys) if vol.encryption else 0,
            )
        )
        er = running_here.get(vol.name)
        if er is None or er.epoch != eng.epoch:
            continue
        if unfinished is None:  # read once, only when an engine here could run one
            unfinished = {}
            for op in await repo.operations():
                if not op.done:
                    unfinished.setdefault(op.volume, []).append(op)
        for op in unfinished.get(vol.name, ()):
            args = dict(op.args)
            secrets: dict[str, str] = {}
            if op.kind is OperationKind.CLONE:
                resolved = await _clone_source(repo, args, nodes)
                if resolved is None:
                    continue
                args["source"] = resolved
                grant = signer and signer.clone(
                    op.id, repo.cluster_id, op.volume, args["source_volume"], args["snapshot"]
                )
                if grant:  # the source's replica server lets this engine read the snapshot
                    args["grant"] = grant
            elif op.kind in (OperationKind.BACKUP, OperationKind.RESTORE):
                found = await _backup_secrets(repo, op)
                if found is None:
                    continue
                secrets = found
            out.operations.append(
                OperationAssignment(
                    id=op.id, kind=op.kind, volume=op.volume, args=args, secrets=secrets
                )
            )
    out.revision = revision(out)
    return out


async def _clone_source(
    repo: Repository, args: dict[str, Any], nodes: dict[str, Node]
) -> str | None:
    """The source replica of a clone: a current one on an up node; None until the source
    snapshot is ready."""
    src, snap = args.get("source_volume"), args.get("snapshot")
    if not isinstance(src, str) or not isinstance(snap, str):
        return None  # the manager writes both (create_volume); without them there is no source
    try:
        s = await repo.snapshot(src, snap)
        vol = await repo.volume(src)
    except NotFound:
        return None
    if s.state is not SnapshotState.READY:
        return None
    best = None
    for r in await repo.replicas(src):
        n = nodes.get(r.node)
        if (
            r.deleting
            or not r.exists
            or n is None
            or n.down_since is not None
            or not n.replica_port
        ):
            continue
        if r.mode is ReplicaMode.ERR or r.generation < vol.current_generation:
            continue
        if best is None or (r.mode is ReplicaMode.RW, r.generation) > best[0]:
            best = (
                (r.mode is ReplicaMode.RW, r.generation),
                f"{r.id}@{n.address}:{n.replica_port}",
            )
    return best[1] if best else None


async def _backup_secrets(repo: Repository, op: Operation) -> dict[str, str] | None:
    """What the engine needs to open the repository of a BACKUP or RESTORE (only here, in
    the heartbeat's answer: never in the stored operation or the API). None while a
    backup's snapshot is not ready yet, or the target is unknown."""
    if op.kind is OperationKind.BACKUP:
        snap = op.args.get("snapshot")
        if not isinstance(snap, str):
            return None
        try:
            if (await repo.snapshot(op.volume, snap)).state is not SnapshotState.READY:
                return None
        except NotFound:
            return None
    name = op.args.get("target")
    if not isinstance(name, str):
        return None
    try:
        return secrets_for_engine(await repo.backup_target(name), await repo.target_secrets(name))
    except NotFound:
        return None
