"""The manager's reconcilers: compare what is wanted with what agents report, and write
new wishes. Each has ``run_once()`` (one pass over every record; tests step it) and runs
only on the elected leader, in this order, every ``reconcile_interval``:

- ``NodeReconciler``: a node whose heartbeats stopped is marked down (its engines too).
- ``ReplicaReconciler``: failed replicas (node down or dropped by the engine) are replaced
  once they have been away longer than the volume's ``stale_replica_timeout``; replica
  counts converge to what was asked; drained replicas go once their replacement is current.
- ``EngineReconciler``: one engine where the volume is attached (or a short-lived
  maintenance engine while operations wait on a detached volume); every new engine gets
  the next epoch, so the one before it is fenced; its replica set follows the replicas.
- ``VolumeReconciler``: deletion, release, robustness of detached volumes, and the
  garbage collection of finished operations.
- ``IdentityReconciler``: tombstones older than ``tombstone_ttl`` go; orphans older than
  ``orphan_grace`` (0: never) whose cluster id is this cluster's are deleted (a tombstone);
  events beyond the newest 1000 go.

Every decision is a compare-and-swap on one record; a pass that loses a race simply
tries again on the next pass.
"""

from __future__ import annotations

import logging
from typing import Literal

from cargohold.control import group_snapshots
from cargohold.control.backup_results import follow_backup
from cargohold.control.group_snapshots import GroupSnapshotReconciler, holding_volumes
from cargohold.control.model import (
    EngineSpec,
    EventKind,
    Node,
    Operation,
    OperationKind,
    OperationState,
    Replica,
    ReplicaMode,
    Robustness,
    Volume,
)
from cargohold.control.repository import Repository, now
from cargohold.control.settings import ManagerSettings
from cargohold.errors import NotFound, Unschedulable

log = logging.getLogger("cargohold.manager")
REPLICA_CREATE_GRACE = 10.0  # seconds a new engine waits for just-placed replicas
ORPHAN_STALE = 600.0  # seconds an orphan of an up node may go unseen before it is dropped
EPOCH_JUMP_ENGINES = 16  # engines after `volume recover-epoch` allowed to jump replica epochs


class NodeReconciler:
    def __init__(self, repo: Repository, settings: ManagerSettings) -> None:
        self.repo, self.settings = repo, settings

    async def run_once(self) -> None:
        t = now()
        for node in await self.repo.nodes():
            if node.down_since is None and t - node.heartbeat_at > self.settings.node_down_after:

                def down(n: Node) -> Node | None:
                    if (
                        n.down_since is not None
                        or t - n.heartbeat_at <= self.settings.node_down_after
                    ):
                        return None
                    n.down_since = t
                    return n

                await self.repo.update_node(node.name, down)
                log.warning(
                    "node %s is down: no heartbeat for %.1f s", node.name, t - node.heartbeat_at
                )
                for vol in await self.repo.volumes():
                    if vol.engine_status and vol.engine_status.node == node.name:

                        def stopped(v: Volume, name: str = node.name) -> Volume | None:
                            if v.engine_status is None or v.engine_status.node != name:
                                return None
                            v.engine_status.running = False
                            v.robustness = (
                                Robustness.FAULTED if v.attach_node == name else v.robustness
                            )
                            return v

                        await self.repo.update_volume(vol.name, stopped)


async def _replicas_by_volume(repo: Repository) -> dict[str, list[Replica]]:
    """Every replica record, by volume: one read of the store per pass, not one a volume."""
    out: dict[str, list[Replica]] = {}
    for r in await repo.replicas():
        out.setdefault(r.volume, []).append(r)
    return out


def _failed(rep: Replica, nodes: dict[str, Node], running: bool) -> bool:
    n = nodes.get(rep.node)
    if n is None or n.down_since is not None:
        return True
    return running and rep.mode is ReplicaMode.ERR


class ReplicaReconciler:
    def __init__(self, repo: Repository, settings: ManagerSettings) -> None:
        self.repo, self.settings = repo, settings

    async def run_once(self) -> None:
        nodes = {n.name: n for n in await self.repo.nodes()}
        by_volume = await _replicas_by_volume(self.repo)
        for vol in await self.repo.volumes():
            if vol.deleting or vol.released:
                continue
            try:
                await self._volume(vol, nodes, by_volume.get(vol.name, []))
            except NotFound:
                continue

    async def _volume(self, vol: Volume, nodes: dict[str, Node], replicas: list[Replica]) -> None:
        t = now()
        running = vol.engine_runs
        reps = [r for r in replicas if not r.deleting]
        # 1. note when each replica failed, or that it is back (the records the repository
        # hands out are shared: a changed one is a copy)
        for i, r in enumerate(reps):
            failed = _failed(r, nodes, running)
            if failed and r.failed_at is None:
                n = nodes.get(r.node)
                since = n.down_since if n and n.down_since else t
                reps[i] = r.model_copy(update={"failed_at": since})
                await self._set(vol, r, failed_at=since)
            elif not failed and r.failed_at is not None:
                reps[i] = r.model_copy(update={"failed_at": None})
                await self._set(vol, r, failed_at=None)
        gone: set[str] = set()  # marked for deletion in this pass
        # a replica is current if its generation reaches what the manager last recorded
        healthy = [
            r
            for r in reps
            if r.failed_at is None
            and r.exists
            and (r.mode is ReplicaMode.RW if running else r.generation >= vol.current_generation)
        ]
        # 2. replace replicas that stayed away too long — never the last current copy
        for r in reps:
            if r.failed_at is not None and t - r.failed_at > vol.stale_replica_timeout and healthy:
                log.warning(
                    "volume %s: replica %s on node %s has been away %.0f s (> %.0f s): "
                    "replacing it",
                    vol.name,
                    r.id,
                    r.node,
                    t - r.failed_at,
                    vol.stale_replica_timeout,
                )
                await self._set(vol, r, deleting=True)
                gone.add(r.id)
        reps = [r for r in reps if r.id not in gone]
        # 3. drained replicas go once enough others are current
        for r in reps:
            others = [h for h in healthy if h.id != r.id and not h.evicting]
            if r.evicting and len(others) >= vol.replicas_wanted:
                log.info("volume %s: replica %s moved off node %s", vol.name, r.id, r.node)
                await self._set(vol, r, deleting=True)
                gone.add(r.id)
        reps = [r for r in reps if r.id not in gone]
        keep = [r for r in reps if not r.evicting]
        # 4. converge the count
        missing = vol.replicas_wanted - len(keep)
        if missing <= 0 and _placement_error(vol):

            def placed(v: Volume) -> Volume:
                v.error = ""
                return v

            await self.repo.update_volume(vol.name, placed)
        if missing > 0:
            await self._add(vol, missing)
        elif missing < 0:
            # too many (e.g. a replica came back after its replacement): drop the worst —
            # failed, then not current (not on disk, behind), then not RW, then the oldest
            current = {h.id for h in healthy}
            ranked = sorted(
                keep,
                key=lambda r: (
                    r.failed_at is None,
                    r.id in current,
                    r.mode is ReplicaMode.RW,
                    r.generation,
                    r.id,
                ),
            )
            for r in ranked[:-missing]:
                if r in healthy and len(healthy) <= 1:
                    continue
                log.info("volume %s: replica %s is one too many; removing it", vol.name, r.id)
                await self._set(vol, r, deleting=True)

    async def _set(self, vol: Volume, r: Replica, **fields: object) -> None:
        def change(rep: Replica) -> Replica:
            return rep.model_copy(update=fields)

        await self.repo.update_replica(vol.name, r.id, change)

    async def _add(self, vol: Volume, count: int) -> None:
        """Place ``count`` more replicas, or as many as fit (and say why not all)."""
        reps: list[Replica] = []
        why = ""
        for n in range(count, 0, -1):
            try:
                reps = await self.repo.plan_replicas(
                    vol.name,
                    vol.stored_bytes,
                    n,
                    zone_spread=vol.zone_spread,
                    node_tags=vol.node_tags,
                    disk_tags=vol.disk_tags,
                    overprovisioning=self.settings.overprovisioning,
                )
                break
            except Unschedulable as e:
                why = why or str(e)
        for rep in reps:
            if await self.repo.add_replica(vol.name, rep):
                log.info(
                    "volume %s: new replica %s on node %s (%s)",
                    vol.name,
                    rep.id,
                    rep.node,
                    rep.disk,
                )
        if vol.error != why:
            if why:
                log.warning("%s", why)

            def say(v: Volume) -> Volume:
                v.error = why
                return v

            await self.repo.update_volume(vol.name, say)


def _placement_error(vol: Volume) -> bool:
    """The volume's error is the scheduler's (cleared once nothing is missing)."""
    return vol.error.startswith(f"volume {vol.name}: ") and " requested, " in vol.error


def _needs_rebuild(vol: Volume, reps: list[Replica], nodes: dict[str, Node]) -> bool:
    """A detached volume with a stale replica (a replacement, a drained node's successor)
    and a current one: a maintenance engine rebuilds it now, not at the next attach."""
    if vol.attach_node is not None or vol.deleting or vol.released or not vol.initialized:
        return False
    up = [
        r
        for r in reps
        if r.exists and (n := nodes.get(r.node)) is not None and n.down_since is None
    ]
    return any(r.generation < vol.current_generation for r in up) and any(
        r.generation >= vol.current_generation for r in up
    )


class EngineReconciler:
    def __init__(self, repo: Repository, settings: ManagerSettings) -> None:
        self.repo, self.settings = repo, settings

    async def run_once(self) -> None:
        nodes = {n.name: n for n in await self.repo.nodes()}
        pending = {o.volume for o in await self.repo.operations() if not o.done}
        pending |= holding_volumes(await group_snapshots.listing(self.repo))  # held: engines stay
        by_volume = await _replicas_by_volume(self.repo)
        for vol in await self.repo.volumes():
            reps = [r for r in by_volume.get(vol.name, []) if not r.deleting]
            busy = vol.name in pending or _needs_rebuild(vol, reps, nodes)
            try:
                await self._volume(vol, reps, nodes, busy)
            except NotFound:
                continue

    def _where(
        self, vol: Volume, reps: list[Replica], nodes: dict[str, Node], busy: bool
    ) -> tuple[str, Literal["attach", "maintenance"]] | None:
        if vol.deleting or vol.released:
            return None
        if vol.attach_node is not None:
            return vol.attach_node, "attach"
        if not busy:
            return None
        eng = vol.engine
        if eng is not None and eng.purpose == "maintenance":
            n = nodes.get(eng.node)
            if n is not None and n.down_since is None:
                return eng.node, "maintenance"
        # a node holding a current replica, up
        cands = sorted(
            (not (r.generation >= vol.current_generation), r.node)
            for r in reps
            if r.exists and (n := nodes.get(r.node)) is not None and n.down_since is None
        )
        return (cands[0][1], "maintenance") if cands else None

    async def _volume(
        self, vol: Volume, reps: list[Replica], nodes: dict[str, Node], busy: bool
    ) -> None:
        where = self._where(vol, reps, nodes, busy)
        ids = sorted(r.id for r in reps if r.exists or (vol.engine and r.id in vol.engine.replicas))
        if where is None:
            if vol.engine is not None:

                def stop(v: Volume) -> Volume:
                    v.engine = None
                    return v

                await self.repo.update_volume(vol.name, stop)
                log.info("volume %s: engine on %s to stop", vol.name, vol.engine.node)
            return
        node, purpose = where
        eng = vol.engine
        # a read-only attach is an engine of its own (its NBD export's flag is set at start):
        # attaching read-only, or no longer, starts a new engine (and fences the old one)
        ro = purpose == "attach" and vol.attach_read_only
        if (
            eng is not None
            and eng.node == node
            and (purpose == "maintenance" or eng.read_only == ro)
        ):
            if eng.purpose != purpose or sorted(eng.replicas) != ids:

                def follow(v: Volume) -> Volume | None:
                    if v.engine is None or v.engine.node != node:
                        return None
                    v.engine = v.engine.model_copy(update={"purpose": purpose, "replicas": ids})
                    return v

                await self.repo.update_volume(vol.name, follow)
            return
        existing = [r for r in reps if r.exists]
        coming = [  # placed moments ago on an up node: start with them, not rebuild them
            r
            for r in reps
            if not r.exists
            and now() - r.created_at < REPLICA_CREATE_GRACE
            and (n := nodes.get(r.node)) is not None
            and n.down_since is None
        ]
        if not existing or coming:
            return  # replicas not on disk yet: wait

        def start(v: Volume) -> Volume | None:
            if v.engine is not None and v.engine.node == node and v.engine.read_only == ro:
                return None
            v.epoch += 1  # every new engine fences the ones before it
            v.engine = EngineSpec(
                node=node,
                epoch=v.epoch,
                purpose=purpose,
                replicas=ids,
                require_epoch=v.current_epoch,
                require_generation=v.current_generation,
                # the first engines after `volume recover-epoch` may open replicas far
                # below the recovered epoch (constants.MAX_EPOCH_STEP)
                epoch_jump=bool(
                    v.recovered_epoch and v.epoch - v.recovered_epoch <= EPOCH_JUMP_ENGINES
                ),
                read_only=ro,
                encrypted=v.encryption is not None,
            )
            v.engine_status = None
            return v

        new = await self.repo.update_volume(vol.name, start)
        if new.engine is not None:
            log.info(
                "volume %s: engine on node %s with epoch %d (%s), replicas %s, requiring "
                "(epoch, generation) >= (%d, %d)",
                vol.name,
                node,
                new.engine.epoch,
                purpose,
                ", ".join(ids),
                new.current_epoch,
                new.current_generation,
            )


class VolumeReconciler:
    def __init__(self, repo: Repository, settings: ManagerSettings) -> None:
        self.repo, self.settings = repo, settings

    async def run_once(self) -> None:
        nodes = {n.name: n for n in await self.repo.nodes()}
        ops = await self.repo.operations()
        by_volume = await _replicas_by_volume(self.repo)
        for vol in await self.repo.volumes():
            try:
                await self._volume(vol, nodes, ops, by_volume.get(vol.name, []))
            except NotFound:
                continue
        t = now()
        names = {v.name for v in await self.repo.volumes()}
        for op in ops:
            if (
                op.done
                and op.finished_at
                and t - op.finished_at > self.settings.operation_retention
            ):
                await self.repo.delete_operation(op.id)
            elif not op.done and op.volume not in names:

                def gone(o: Operation) -> Operation:
                    o.state, o.error, o.finished_at = OperationState.FAILED, "volume deleted", t
                    return o

                await follow_backup(self.repo, await self.repo.update_operation(op.id, gone))

    async def _volume(
        self,
        vol: Volume,
        nodes: dict[str, Node],
        ops: list[Operation],
        reps: list[Replica],
    ) -> None:
        if vol.deleting:
            if vol.engine_runs or (vol.engine_status and vol.engine_status.running):
                return  # the engine stops first (the engine reconciler cleared it)
            for r in reps:
                n = nodes.get(r.node)
                if not r.deleting:
                    await self.repo.update_replica(
                        vol.name, r.id, lambda x: x.model_copy(update={"deleting": True})
                    )
                elif n is None or n.down_since is not None or not r.exists:
                    # its node is gone (or it never reached the disk): forget the record,
                    # leaving a tombstone: a returning agent reports it and is told to
                    # delete it (positive evidence, invariant 7)
                    up = n is not None and n.down_since is None
                    await self.repo.delete_replica_record(vol.name, r.id, gone=up)
            for s in await self.repo.snapshots(vol.name):
                await self.repo.delete_snapshot_record(vol.name, s.name)
            if not await self.repo.replicas(vol.name):
                await self.repo.delete_volume_records(vol.name)
                log.info("volume %s deleted", vol.name)
                await self.repo.add_event(
                    EventKind.VOLUME_DELETED, "deleted, with its replicas", volume=vol.name
                )
            return
        if vol.engine_runs or vol.released or vol.attach_node is not None:
            return  # an engine reports robustness (or its node is down: faulted)
        # detached: robustness from the replicas on disk
        good = [
            r
            for r in reps
            if not r.deleting
            and r.exists
            and (n := nodes.get(r.node)) is not None
            and n.down_since is None
            and r.generation >= vol.current_generation
        ]
        rob = (
            Robustness.FAULTED
            if not good
            else Robustness.DEGRADED
            if len(good) < vol.replicas_wanted
            else Robustness.HEALTHY
        )
        if not reps or not any(r.exists for r in reps):
            rob = Robustness.UNKNOWN
        if rob is not vol.robustness:

            def set_rob(v: Volume) -> Volume:
                v.robustness = rob
                return v

            await self.repo.update_volume(vol.name, set_rob)
        for op in ops:  # an operation whose engine went away before it finished: rerun
            if op.volume == vol.name and op.state is OperationState.RUNNING and vol.engine is None:

                def again(o: Operation) -> Operation:
                    o.state = OperationState.PENDING
                    return o

                await self.repo.update_operation(op.id, again)
        _ = OperationKind


class IdentityReconciler:
    def __init__(self, repo: Repository, settings: ManagerSettings) -> None:
        self.repo, self.settings = repo, settings

    async def run_once(self) -> None:
        t = now()
        for stone in await self.repo.tombstones():
            if t - stone.deleted_at > self.settings.tombstone_ttl:
                await self.repo.delete_tombstone(stone.volume, stone.replica)
        grace = self.settings.orphan_grace
        cluster_id = self.repo.cluster_id
        orphans = await self.repo.orphans()
        if orphans:  # records that outlived their replica's absence from the disk
            known = {r.id for r in await self.repo.replicas()}
            nodes = {n.name: n for n in await self.repo.nodes()}
            for o in list(orphans):
                n = nodes.get(o.node)
                live = n is not None and n.down_since is None
                if o.id in known or (live and t - o.last_seen > ORPHAN_STALE):
                    await self.repo.drop_orphan(o.node, o.id)
                    orphans.remove(o)
                    log.info(
                        "orphan replica %s on node %s: %s",
                        o.id,
                        o.node,
                        "in a record again" if o.id in known else "not seen any more",
                    )
        for o in orphans if grace > 0 else ():
            if t - o.first_seen <= grace or not cluster_id or o.cluster_id != cluster_id:
                continue
            await self.repo.condemn_orphan(o, "orphan grace")
            log.warning(
                "orphan replica %s on node %s kept %.0f s (orphan_grace): deleting it",
                o.id,
                o.node,
                t - o.first_seen,
            )
            await self.repo.add_event(
                EventKind.ORPHAN_DELETED,
                f"orphan replica {o.id} on node {o.node} deleted after orphan_grace",
                node=o.node,
                volume=o.volume,
                replica=o.id,
            )
        await self.repo.trim_events()


RECONCILERS = (
    NodeReconciler,
    ReplicaReconciler,
    EngineReconciler,
    VolumeReconciler,
    IdentityReconciler,
    GroupSnapshotReconciler,
)
