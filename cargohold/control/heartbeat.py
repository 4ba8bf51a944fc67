"""A node agent's heartbeat: take in what it reports, answer what should run on its node.

Called by the API for ``POST /api/v1/nodes/{node}/heartbeat`` (through
``Service.heartbeat``, control/heartbeat_hold.py, which holds the answer: the long poll),
on whichever manager the agent reached (leader or standby: it only reads and
compare-and-swaps records). Reports update the observed half of records: replica
existence, epochs and orphans here; engine status in engine_reports.py; operation progress
in operation_results.py. The answer is computed from the desired half that the reconcilers
write (assignments.py). The records are read once per heartbeat, and nothing is written
when a report changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cargohold.control.assignments import assignments
from cargohold.control.deletion import Verdict, decide, replica_cluster
from cargohold.control.engine_reports import ingest_engine, update_volume
from cargohold.control.grant_signer import GrantSigner
from cargohold.control.model import (
    Assignments,
    DiskCheck,
    EventKind,
    Heartbeat,
    Node,
    Orphan,
    Replica,
    ReplicaReport,
    Robustness,
    Tombstone,
    Volume,
)
from cargohold.control.operation_results import ingest_operation
from cargohold.control.repository import Repository, now
from cargohold.control.settings import ManagerSettings
from cargohold.errors import NotFound

log = logging.getLogger("cargohold.manager")
ORPHAN_SEEN_EVERY = 60.0  # seconds between writes of an unchanged orphan's last_seen


async def _ingest_disk_checks(repo: Repository, name: str, checks: list[DiskCheck]) -> None:
    """What the agent found at its disks' paths, into their records (``disk add`` waits
    for it; the scheduler places nothing on a disk with an ``error``)."""
    found = {(c.name, c.path): c for c in checks}
    for disk in await repo.disks(name):
        c = found.get((disk.name, disk.path))
        if c is None:
            continue
        error = f"node {name}: {c.error}" if c.error else ""
        warning = f"node {name}: {c.warning}" if c.warning else ""
        if (disk.checked, disk.error, disk.warning) != (True, error, warning):
            await repo.put_disk(
                disk.model_copy(update={"checked": True, "error": error, "warning": warning})
            )


async def handle(
    repo: Repository,
    name: str,
    hb: Heartbeat,
    settings: ManagerSettings,
    wake: Callable[[], None] = lambda: None,
    signer: GrantSigner | None = None,
) -> Assignments:
    """``signer``: the manager's read grants for clones (``assignments``). ``wake`` is called when the report changed something a reconciler waits for (a
    replica now on disk or gone from it, an engine stopped, an operation finished), so
    the next step does not wait for the next reconciler pass."""
    t = now()
    refused: list[str] = []

    def beat(node: Node) -> Node:
        if node.down_since is not None:
            log.info("node %s is back (heartbeat after %.1f s)", name, t - node.down_since)
        node.heartbeat_at = t
        node.down_since = None
        if hb.replica_port:
            node.replica_port = hb.replica_port
        if node.error != hb.refusal:
            if hb.refusal:
                refused.append(hb.refusal)
            node.error = hb.refusal
        return node

    await repo.update_node(name, beat)
    if refused:
        log.error("node %s refuses this manager: %s", name, refused[-1])
        await repo.add_event(EventKind.AGENT_REFUSED, refused[-1], node=name)
    # one read of each kind of record per heartbeat (parsed once per revision: the
    # repository caches them); every write below is still a compare-and-swap
    volumes = {v.name: v for v in await repo.volumes()}
    replicas = await repo.replicas()
    await _ingest_replicas(repo, name, hb, volumes, replicas, wake)
    if hb.engines:
        down = {n.name for n in await repo.nodes() if n.down_since is not None}
        by_volume: dict[str, list[Replica]] = {}
        for r in replicas:
            by_volume.setdefault(r.volume, []).append(r)
        for er in hb.engines:
            vol = volumes.get(er.volume)
            if vol is not None:
                await ingest_engine(repo, name, er, vol, by_volume.get(vol.name, []), down, wake)
    reported = {er.volume for er in hb.engines}
    for vol in volumes.values():
        st = vol.engine_status
        if st is not None and st.node == name and st.running and vol.name not in reported:

            def gone(v: Volume) -> Volume | None:
                if v.engine_status is None or v.engine_status.node != name:
                    return None
                v.engine_status.running = False
                return v

            await repo.update_volume(vol.name, gone)
            wake()
    for orep in hb.operations:
        await ingest_operation(repo, orep, wake)
    if hb.disk_checks:
        await _ingest_disk_checks(repo, name, hb.disk_checks)
    return await assignments(repo, name, hb, settings, signer)


async def _ingest_replicas(
    repo: Repository,
    name: str,
    hb: Heartbeat,
    volumes: dict[str, Volume],
    replicas: list[Replica],
    wake: Callable[[], None],
) -> None:
    reported = {r.id: r for r in hb.replicas}
    engines = {v.name: v.engine_runs for v in volumes.values()}
    for rep in replicas:
        if rep.node != name:
            continue
        got = reported.get(rep.id)
        if rep.deleting and got is None:
            await repo.delete_replica_record(rep.volume, rep.id, gone=True)
            log.info("replica %s of volume %s deleted from node %s", rep.id, rep.volume, name)
            await repo.add_event(
                EventKind.REPLICA_DELETED,
                f"replica {rep.id} deleted from node {name} (its record said deleting)",
                node=name,
                volume=rep.volume,
                replica=rep.id,
            )
            wake()
            continue
        exists = got is not None
        # while an engine runs, it knows the replica's generation best; else the replica
        own = got is not None and not engines.get(rep.volume, False)

        # a replica's epoch only grows; LIST leaves it out (0) for a replica not open yet
        epoch = max(rep.epoch, got.epoch) if got is not None else rep.epoch

        def seen(
            r: Replica,
            exists: bool = exists,
            got: ReplicaReport | None = got,
            own: bool = own,
            epoch: int = epoch,
        ) -> Replica:
            r.exists = exists
            r.epoch = epoch
            if own and got is not None:  # own: got is not None
                r.generation = got.generation
                r.mode = None
            return r

        if (
            rep.exists != exists
            or rep.epoch != epoch
            or (
                own
                and got is not None
                and (rep.generation != got.generation or rep.mode is not None)
            )
        ):
            await repo.update_replica(rep.volume, rep.id, seen)
            if exists and not rep.exists:
                wake()
        vol = volumes.get(rep.volume)
        if vol is not None and epoch > vol.epoch:
            await _fenced_by_epoch(repo, vol, rep, epoch)
    await _ingest_unknown(repo, name, hb, {r.id for r in replicas})


async def _ingest_unknown(repo: Repository, name: str, hb: Heartbeat, known: set[str]) -> None:
    """Replicas on the node's disks that no record names: orphans (recorded, kept) or
    tombstoned (deleted by the agent; the tombstone notes when they are gone).

    A node that reports no such replica, and reported none last time either, costs no
    read (the common case: two reads less per heartbeat). Orphans that another manager
    recorded and whose replica went meanwhile are dropped by the identity reconciler
    once they are not seen for ``ORPHAN_STALE``."""
    unknown = frozenset(r.id for r in hb.replicas if r.id not in known)
    last = repo.unknown_seen.get(name)
    repo.unknown_seen[name] = unknown
    if not unknown and last is not None and not last:
        return
    t = now()
    cluster_id = repo.cluster_id
    stones = {s.replica: s for s in await repo.tombstones() if s.node == name}
    orphans = {o.id: o for o in await repo.orphans(name)}
    reported = {r.id for r in hb.replicas}
    for rr in hb.replicas:
        if rr.id in known:
            continue
        if decide(rr, None, stones.get(rr.id), cluster_id) is Verdict.DELETE:
            continue
        old = orphans.get(rr.id)
        new = Orphan(
            id=rr.id,
            volume=rr.volume,
            node=name,
            disk_path=rr.disk_path,
            size_bytes=rr.size_bytes,
            generation=rr.generation,
            seen=rr.seen,
            epoch=rr.epoch,
            history=rr.history,
            snapshots=rr.snapshots,
            cluster_id=replica_cluster(rr),
            first_seen=old.first_seen if old else t,
            last_seen=t,
        )
        if old is None:
            await repo.put_orphan(new)
            why = "another cluster's" if new.cluster_id != cluster_id else "no record, no tombstone"
            log.warning(
                "orphan replica %s (volume %r, %d bytes, generation %d) on node %s: %s; "
                "kept (cargohold replica orphans)",
                rr.id,
                rr.volume,
                rr.size_bytes,
                rr.generation,
                name,
                why,
            )
            await repo.add_event(
                EventKind.ORPHAN_FOUND,
                f"orphan replica {rr.id} on node {name} ({why}); kept",
                node=name,
                volume=rr.volume,
                replica=rr.id,
            )
        elif old.model_copy(update={"last_seen": t}) != new or t - old.last_seen > (
            ORPHAN_SEEN_EVERY
        ):
            await repo.put_orphan(new)
    for rid in orphans:
        if rid in known or rid not in reported:
            await repo.drop_orphan(name, rid)
            log.info(
                "replica %s on node %s is no orphan any more (%s)",
                rid,
                name,
                "in a record again" if rid in known else "gone from the disk",
            )
    for rid, stone in stones.items():
        if stone.done_at is None and rid not in reported and rid not in known:

            def done(s: Tombstone) -> Tombstone | None:
                if s.done_at is not None:
                    return None
                s.done_at = t
                return s

            try:
                await repo.update_tombstone(stone.volume, rid, done)
            except NotFound:
                continue
            log.info("replica %s deleted from node %s (tombstoned: %s)", rid, name, stone.reason)
            await repo.add_event(
                EventKind.REPLICA_DELETED,
                f"replica {rid} deleted from node {name} (tombstone: {stone.reason})",
                node=name,
                volume=stone.volume,
                replica=rid,
            )


def fenced_message(volume: str, replica: str, epoch: int) -> str:
    """The volume's error while one of its replicas holds an epoch the manager never issued."""
    return (
        f"fenced by epoch {epoch} on replica {replica}, above every epoch the manager issued: "
        f"run `cargohold volume recover-epoch {volume}`"
    )


async def _fenced_by_epoch(repo: Repository, vol: Volume, rep: Replica, epoch: int) -> None:
    """A replica accepted an epoch above the volume's newest (a bogus OPEN, or an older
    version's): every engine the manager starts is fenced. Say so in the volume's error,
    with the way out, instead of ``attaching`` with a crash-looping engine."""
    why = fenced_message(vol.name, rep.id, epoch)

    def stale(v: Volume) -> bool:
        # wanted attached and no engine runs (every replica fenced): "healthy" would be a
        # lie; while one runs (others not fenced) it reports robustness itself
        lie = (
            v.attach_node is not None
            and not v.engine_runs
            and v.robustness is not Robustness.UNKNOWN
        )
        return v.error != why or lie

    if not stale(vol):
        return
    if vol.error != why:
        log.warning("volume %s: %s", vol.name, why)

    def say(v: Volume) -> Volume | None:
        if not stale(v) or epoch <= v.epoch:
            return None
        v.error = why
        if v.attach_node is not None and not v.engine_runs:
            v.robustness = Robustness.UNKNOWN
        return v

    await update_volume(repo, vol.name, say)
