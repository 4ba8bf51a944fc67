"""A node agent's heartbeat: take in what it reports, answer what should run on its node.

Called by the API for ``POST /api/v1/nodes/{node}/heartbeat``, on whichever manager the
agent reached (leader or standby: it only reads and compare-and-swaps records). Reports
update the observed half of records (replica modes and generations, engine status,
operation progress); the answer is computed from the desired half that the reconcilers
write (``assignments``). Holding the answer (the long poll) and the reports sent as their
digest are ``Service.heartbeat``'s; the records are read once per heartbeat, and nothing is
written when a report changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cargohold.control.deletion import Verdict, decide, replica_cluster
from cargohold.control.digests import revision
from cargohold.control.model import (
    Assignments,
    DiskReport,
    EngineAssignment,
    EngineReport,
    EngineStatus,
    EventKind,
    Heartbeat,
    Node,
    Operation,
    OperationAssignment,
    OperationKind,
    OperationReport,
    OperationState,
    Orphan,
    Replica,
    ReplicaAssignment,
    ReplicaMode,
    Robustness,
    ScrubSummary,
    SnapshotState,
    Tombstone,
    Volume,
)
from cargohold.control.repository import Repository, now
from cargohold.control.settings import ManagerSettings
from cargohold.errors import NotFound

log = logging.getLogger("cargohold.manager")
ORPHAN_SEEN_EVERY = 60.0  # seconds between writes of an unchanged orphan's last_seen


async def handle(
    repo: Repository,
    name: str,
    hb: Heartbeat,
    settings: ManagerSettings,
    wake: Callable[[], None] = lambda: None,
) -> Assignments:
    """``wake`` is called when the report changed something a reconciler waits for (a
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
                await _ingest_engine(repo, name, er, vol, by_volume.get(vol.name, []), down, wake)
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
        await _ingest_operation(repo, orep, wake)
    return await assignments(repo, name, hb, settings)


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

        def seen(r, exists=exists, got=got, own=own, epoch=epoch):  # type: ignore[no-untyped-def]
            r.exists = exists
            r.epoch = epoch
            if own:
                r.generation = got.generation
                r.mode = None
            return r

        if (
            rep.exists != exists
            or rep.epoch != epoch
            or (own and (rep.generation != got.generation or rep.mode is not None))  # type: ignore[union-attr]
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


NO_SPACE = "no space left on"  # in a replica server's NoSpace message (replica/session.py)


def no_space_error(links: dict[Any, dict[str, Any]], current: str) -> str | None:
    """The volume's error while one of its replicas is dropped (ERR) because its disk is
    full: which replica, which disk, which node — or "" once every replica is RW again
    (None: leave the error as it is). The agent re-adds such a replica with back-off
    (agent/processes.py ``readd_wait``); while a re-add is being tried (WO) the error stays."""
    for rid, x in sorted(links.items(), key=lambda kv: str(kv[0])):
        err = str(x.get("error", ""))
        if x.get("mode") == "ERR" and NO_SPACE in err:
            return f"replica {rid} is failed: {err} (re-added with back-off up to 5 min)"
    ours = current.startswith("replica ") and NO_SPACE in current
    if ours and all(x.get("mode") == "RW" for x in links.values()):
        return ""
    return None


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

    await _update_volume(repo, vol.name, say)


def scrub_summary(status: dict[str, Any]) -> ScrubSummary | None:
    """The last succeeded scrub pass in an engine's status (``scrub.last``), or None."""
    last = (status.get("scrub") or {}).get("last")
    if not isinstance(last, dict) or last.get("state") != "succeeded":
        return None
    try:
        return ScrubSummary(
            ended_at=float(last["started_at"]) + float(last.get("seconds", 0.0)),
            reason=str(last.get("reason", "")),
            checked_blocks=int(last.get("checked_blocks", 0)),
            found=int(last.get("found", 0)),
            repaired=int(last.get("repaired", 0)),
            unrepaired=int(last.get("unrepaired", 0)),
            compared_replicas=int(last.get("compared_replicas", 0)),
            diverged_found=int(last.get("diverged_found", 0)),
            diverged_repaired=int(last.get("diverged_repaired", 0)),
            diverged_unrepaired=int(last.get("diverged_unrepaired", 0)),
        )
    except (KeyError, TypeError, ValueError):
        return None  # an engine's status is not trusted to be well formed


async def _ingest_engine(
    repo: Repository,
    name: str,
    er: EngineReport,
    vol: Volume,
    replicas: list[Replica],
    down: set[str],
    wake: Callable[[], None],
) -> None:
    """What one engine reports, into its volume's and replicas' records. ``vol`` and
    ``replicas`` as read at the start of the heartbeat; nothing is written (no fsync)
    when the report changes nothing."""
    st = er.status or {}
    links = {x.get("id"): x for x in st.get("replicas", []) if isinstance(x, dict)}
    if vol.engine is None or vol.engine.node != name or vol.engine.epoch != er.epoch:
        # an engine the manager no longer wants here (it is being stopped): note only
        # that it still runs, so the volume shows "detaching"
        if vol.engine_status is not None and vol.engine_status.node == name:

            def old(v: Volume) -> Volume:
                assert v.engine_status is not None
                v.engine_status.running = er.running
                return v

            if er.running != vol.engine_status.running:
                await _update_volume(repo, vol.name, old)
                wake()
        return
    rw_gens = [int(x.get("generation", 0)) for x in links.values() if x.get("mode") == "RW"]
    # robustness counts only replicas whose node is up: an idle engine notices a dead
    # replica only at its next I/O, the manager knows from the missing heartbeats
    where = {r.id: r.node for r in replicas}
    rw = sum(1 for rid, x in links.items() if x.get("mode") == "RW" and where.get(rid) not in down)

    def observe(v: Volume) -> dict[str, object]:
        """The observed fields of ``v`` after this report (``v`` is not changed)."""
        status = EngineStatus(
            node=name,
            epoch=er.epoch,
            running=er.running,
            endpoint=st.get("endpoint") or er.endpoint,
            generation=int(st.get("generation", 0) or 0),
            size_bytes=int(st.get("size_bytes", 0) or 0),
            robustness=Robustness.UNKNOWN,
            error=er.error,
            reported_at=now(),
        )
        old = v.engine_status
        if old is not None and old.model_copy(update={"reported_at": 0.0}) == (
            status.model_copy(update={"reported_at": 0.0})
        ):
            status = old  # nothing new: no write (every write is an fsync)
        out: dict[str, object] = {"engine_status": status}
        if er.running and st:
            # the newest generation every current replica has: a lower bound on what a
            # future engine must start from (invariant 4)
            if "current_generation" in st:  # (epoch, generation) every current replica has
                top = (int(st.get("current_epoch", 0)), int(st["current_generation"]))
                if top > (v.current_epoch, v.current_generation):
                    out["current_epoch"], out["current_generation"] = top
            elif rw_gens:
                out["current_generation"] = max(v.current_generation, min(rw_gens))
            out["robustness"] = (
                Robustness.FAULTED
                if rw == 0
                else Robustness.DEGRADED
                if rw < v.replicas_wanted
                else Robustness.HEALTHY
            )
            full = no_space_error(links, v.error)
            if full is not None:
                out["error"] = full
            if st.get("fenced"):
                out["error"] = f"engine epoch {er.epoch} was fenced: {st['fenced']}"
            scrub = scrub_summary(st)
            if scrub is not None and (
                v.last_scrub is None or scrub.ended_at > v.last_scrub.ended_at
            ):
                out["last_scrub"] = scrub
        return out

    def observed(v: Volume) -> Volume:
        for k, value in observe(v).items():
            setattr(v, k, value)
        return v

    if any(getattr(vol, k) != value for k, value in observe(vol).items()):
        await _update_volume(repo, vol.name, observed)  # only a change is written
    if not (er.running and st):
        return
    for rep in replicas:
        link = links.get(rep.id)
        mode = (
            ReplicaMode(link["mode"]) if link and link.get("mode") in ("RW", "WO", "ERR") else None
        )
        gen = int(link.get("generation", rep.generation)) if link else rep.generation
        rb = link.get("rebuild") if link else None
        progress = None
        if isinstance(rb, dict) and rb.get("total"):
            progress = min(1.0, float(rb.get("done", 0)) / float(rb["total"]))
        err = str(link.get("error", "")) if link else ""
        if (rep.mode, rep.generation, rep.rebuild_progress, rep.error) == (
            mode,
            gen,
            progress,
            err,
        ):
            continue

        def upd(r, mode=mode, gen=gen, progress=progress, err=err):  # type: ignore[no-untyped-def]
            r.mode, r.generation, r.rebuild_progress, r.error = mode, gen, progress, err
            return r

        try:
            await repo.update_replica(vol.name, rep.id, upd)
        except NotFound:
            pass  # deleted meanwhile


async def _update_volume(repo: Repository, name: str, change) -> None:  # type: ignore[no-untyped-def]
    try:
        await repo.update_volume(name, change)
    except NotFound:
        pass  # deleted since the heartbeat read it


async def _ingest_operation(
    repo: Repository, orep: OperationReport, wake: Callable[[], None]
) -> None:
    try:
        op = await repo.operation(orep.id)
    except NotFound:
        return
    if op.done:
        return
    state = orep.state
    if (
        state is OperationState.FAILED
        and op.kind is OperationKind.SNAPSHOT_CREATE
        and "already exists" in orep.error
    ):
        state = OperationState.SUCCEEDED  # a retried create that had already happened
    if (
        state is OperationState.FAILED
        and op.kind is OperationKind.SNAPSHOT_DELETE
        and ("not found" in orep.error or "no snapshot" in orep.error)
    ):
        state = OperationState.SUCCEEDED
    done = state in (OperationState.SUCCEEDED, OperationState.FAILED)

    def progress(o):  # type: ignore[no-untyped-def]
        o.state, o.progress, o.error, o.result = state, orep.progress, orep.error, orep.result
        if done:
            o.finished_at = now()
            o.progress = 1.0 if state is OperationState.SUCCEEDED else o.progress
        return o

    op = await repo.update_operation(orep.id, progress)
    if done:
        await apply_result(repo, op)
        wake()


async def apply_result(repo: Repository, op) -> None:  # type: ignore[no-untyped-def]
    """What a finished operation changes in the records."""
    ok = op.state is OperationState.SUCCEEDED
    name = op.args.get("name", "")
    try:
        if op.kind is OperationKind.SNAPSHOT_CREATE:

            def snap(s):  # type: ignore[no-untyped-def]
                s.state = SnapshotState.READY if ok else SnapshotState.ERROR
                s.error = "" if ok else op.error
                return s

            await repo.update_snapshot(op.volume, name, snap)
        elif op.kind is OperationKind.SNAPSHOT_DELETE:
            if ok:
                await repo.delete_snapshot_record(op.volume, name)
            else:

                def back(s):  # type: ignore[no-untyped-def]
                    s.state, s.error = SnapshotState.READY, op.error
                    return s

                await repo.update_snapshot(op.volume, name, back)
        elif op.kind is OperationKind.EXPAND and ok:
            size = int(op.args["size_bytes"])

            def grow(v: Volume) -> Volume:
                v.size_bytes = max(v.size_bytes, size)
                return v

            await repo.update_volume(op.volume, grow)
            for rep in await repo.replicas(op.volume):

                def rsize(r, size=size):  # type: ignore[no-untyped-def]
                    r.size_bytes = max(r.size_bytes, size)
                    return r

                await repo.update_replica(op.volume, rep.id, rsize)
        elif op.kind is OperationKind.CLONE:

            def cloned(v: Volume) -> Volume:
                v.initialized = ok or v.initialized
                v.error = "" if ok else f"clone failed: {op.error}"
                return v

            await repo.update_volume(op.volume, cloned)
    except NotFound:
        pass


async def assignments(
    repo: Repository, name: str, hb: Heartbeat, settings: ManagerSettings
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
        size = max(r.size_bytes, vol.size_bytes if vol else 0)
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
            r = by_id.get(rid)
            n = nodes.get(r.node) if r else None
            if r is None or n is None or not n.replica_port or r.deleting:
                continue
            specs.append(f"{rid}@{n.address}:{n.replica_port}")
            if r.node == name:
                local = rid
        if not specs:
            continue
        out.engines.append(
            EngineAssignment(
                volume=vol.name,
                epoch=eng.epoch,
                size_bytes=vol.size_bytes,
                replicas=specs,
                local=local,
                require_epoch=eng.require_epoch,
                require_generation=eng.require_generation,
                purpose=eng.purpose,
                last_scrub_at=vol.last_scrub.ended_at if vol.last_scrub else 0.0,
                epoch_jump=eng.epoch_jump,
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
            if op.kind is OperationKind.CLONE:
                resolved = await _clone_source(repo, args, nodes)
                if resolved is None:
                    continue
                args["source"] = resolved
            out.operations.append(
                OperationAssignment(id=op.id, kind=op.kind, volume=op.volume, args=args)
            )
    out.revision = revision(out)
    return out


async def _clone_source(repo: Repository, args: dict, nodes: dict[str, Node]) -> str | None:  # type: ignore[type-arg]
    """The source replica of a clone: a current one on an up node; None until the source
    snapshot is ready."""
    src, snap = args.get("source_volume"), args.get("snapshot")
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
