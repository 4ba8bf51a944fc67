"""What a running engine reports in its node's heartbeat, into its volume's and replicas'
records: status, robustness, the newest current generation (invariant 4), a full disk's
error, the last scrub, each replica's mode, generation and rebuild progress.

Called by heartbeat.py's ``handle`` once per engine in a report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cargohold.control import key_retention
from cargohold.control.model import (
    EngineReport,
    EngineStatus,
    EventKind,
    NBDClient,
    Replica,
    ReplicaMode,
    Robustness,
    ScrubSummary,
    Volume,
)
from cargohold.control.repository import Repository, now
from cargohold.errors import NotFound

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


def nbd_clients(status: dict[str, Any]) -> list[NBDClient]:
    """The NBD clients in an engine's status (``nbd_clients``); malformed entries are
    left out (an engine's status is not trusted to be well formed)."""
    out = []
    for x in status.get("nbd_clients") or []:
        if isinstance(x, dict) and isinstance(x.get("peer"), str):
            out.append(NBDClient(peer=x["peer"], export=str(x.get("export", ""))))
    return out


async def ingest_engine(
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
    links: dict[Any, dict[str, Any]] = {
        x.get("id"): x for x in st.get("replicas", []) if isinstance(x, dict)
    }
    if vol.engine is None or vol.engine.node != name or vol.engine.epoch != er.epoch:
        # an engine the manager no longer wants here (it is being stopped): note only
        # that it still runs, so the volume shows "detaching"
        if vol.engine_status is not None and vol.engine_status.node == name:

            def old(v: Volume) -> Volume:
                assert v.engine_status is not None
                v.engine_status.running = er.running
                return v

            if er.running != vol.engine_status.running:
                await update_volume(repo, vol.name, old)
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
            nbd_clients=nbd_clients(st),
            qos=qos_report(st.get("qos")),
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

    seen = observe(vol)
    if any(getattr(vol, k) != value for k, value in seen.items()):
        await update_volume(repo, vol.name, observed)  # only a change is written
        await _volume_events(repo, vol, seen, name)
    if not (er.running and st):
        return
    if vol.encryption is not None and vol.encryption.rotation is not None:
        await key_retention.engine_rekey(repo, vol, st.get("rekey"))  # a data-key rotation
    for rep in replicas:
        link = links.get(rep.id)
        mode = (
            ReplicaMode(link["mode"]) if link and link.get("mode") in ("RW", "WO", "ERR") else None
        )
        gen = int(link.get("generation", rep.generation)) if link else rep.generation
        progress = rebuild_progress(link.get("rebuild") if link else None)
        err = str(link.get("error", "")) if link else ""
        if (rep.mode, rep.generation, rep.rebuild_progress, rep.error) == (
            mode,
            gen,
            progress,
            err,
        ):
            continue

        def upd(
            r: Replica,
            mode: ReplicaMode | None = mode,
            gen: int = gen,
            progress: float | None = progress,
            err: str = err,
        ) -> Replica:
            r.mode, r.generation, r.rebuild_progress, r.error = mode, gen, progress, err
            return r

        try:
            await repo.update_replica(vol.name, rep.id, upd)
        except NotFound:
            continue  # deleted meanwhile
        await _replica_event(repo, vol.name, rep, mode, err)


async def _volume_events(repo: Repository, vol: Volume, seen: dict[str, object], node: str) -> None:
    """Events of an engine's report that changed its volume: the engine came up where the
    volume is wanted (attached), a scrub pass that found rot."""
    status = seen.get("engine_status")
    was = vol.engine_status
    if (
        isinstance(status, EngineStatus)
        and status.running
        and not (was is not None and was.running and was.epoch == status.epoch)
        and vol.attach_node == node
    ):
        await repo.add_event(
            EventKind.VOLUME_ATTACHED,
            f"attached on node {node} (engine epoch {status.epoch})",
            volume=vol.name,
            node=node,
        )
    scrub = seen.get("last_scrub")
    if isinstance(scrub, ScrubSummary) and scrub != vol.last_scrub:
        bad = scrub.found + scrub.diverged_found
        if bad:
            await repo.add_event(
                EventKind.SCRUB_FOUND_ROT,
                f"scrub found {scrub.found} bad and {scrub.diverged_found} diverged blocks; "
                f"repaired {scrub.repaired + scrub.diverged_repaired}, unrepaired "
                f"{scrub.unrepaired + scrub.diverged_unrepaired}",
                volume=vol.name,
            )


async def _replica_event(
    repo: Repository, volume: str, rep: Replica, mode: ReplicaMode | None, err: str
) -> None:
    """A replica's mode changed in its engine: dropped (ERR), rebuilding (WO), current again."""
    if mode is rep.mode or mode is None:
        return
    if mode is ReplicaMode.ERR:
        kind, what = EventKind.REPLICA_FAILED, f"replica failed: {err or 'dropped by the engine'}"
    elif mode is ReplicaMode.WO:
        kind, what = EventKind.REBUILD_STARTED, "rebuild started"
    elif rep.mode is ReplicaMode.WO:
        kind, what = EventKind.REBUILD_FINISHED, "rebuild finished: the replica is current"
    else:
        return
    await repo.add_event(kind, what, volume=volume, node=rep.node, replica=rep.id)


async def update_volume(
    repo: Repository, name: str, change: Callable[[Volume], Volume | None]
) -> None:
    try:
        await repo.update_volume(name, change)
    except NotFound:
        pass  # deleted since the heartbeat read it


def rebuild_progress(rb: object) -> float | None:
    """A rebuild's progress (0..1) from its engine's report of it (engine/rebuild.py:
    ``done_bytes`` of ``total_bytes``); None when there is none, or it is malformed."""
    if not isinstance(rb, dict):
        return None
    try:
        total, done = float(rb.get("total_bytes") or 0), float(rb.get("done_bytes") or 0)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, done / total)) if total > 0 else None


def qos_report(qos: object) -> dict[str, Any]:
    """The part of an engine's ``qos`` status the manager keeps: the limits it applies and
    its throttle counters (seconds to 0.1 s, so an idle volume causes no writes)."""
    if not isinstance(qos, dict):
        return {}
    limits = qos.get("limits")
    return {
        "limits": limits if isinstance(limits, dict) else {},
        "throttled_requests_total": int(qos.get("throttled_requests_total") or 0),
        "throttled_seconds_total": round(float(qos.get("throttled_seconds_total") or 0.0), 1),
        # its share of a busy node's IOPS, set by the node's agent (weights; docs/qos.md)
        **({"fair_iops": fair} if isinstance(fair := qos.get("fair_iops"), int) else {}),
        **({"fair_bandwidth": bw} if isinstance(bw := qos.get("fair_bandwidth"), int) else {}),
        # its engine's CPU priority from its weight, set by the node's agent
        **({"nice": n} if isinstance(n := qos.get("nice"), int) else {}),
    }
