"""The API's JSON for volumes and replicas: records plus what is derived from them
(state, robustness, endpoint). Shapes are documented in docs/control-plane.md."""

from __future__ import annotations

from typing import Any

from cargohold.control.model import Node, Replica, ReplicaMode, Volume


def replica_state(rep: Replica, node: Node | None, engine_running: bool) -> str:
    if rep.deleting:
        return "deleting"
    if not rep.exists:
        return "pending" if node is None or node.down_since is None else "failed"
    if node is None or node.down_since is not None or rep.mode is ReplicaMode.ERR:
        return "failed"
    if not engine_running or rep.mode is None:
        return "stopped"
    return "rebuilding" if rep.mode is ReplicaMode.WO else "running"


def replica_view(rep: Replica, node: Node | None, engine_running: bool) -> dict[str, Any]:
    return {
        "id": rep.id,
        "volume": rep.volume,
        "node": rep.node,
        "disk": rep.disk,
        "mode": rep.mode.value if rep.mode and engine_running else None,
        "generation": rep.generation,
        "rebuild_progress": rep.rebuild_progress if rep.mode is ReplicaMode.WO else None,
        "state": replica_state(rep, node, engine_running),
        "evicting": rep.evicting,
        "error": rep.error,
    }


def engine_running(vol: Volume) -> bool:
    st = vol.engine_status
    return bool(
        st is not None and st.running and vol.engine is not None and st.epoch == vol.engine.epoch
    )


def volume_view(vol: Volume, replicas: list[Replica], nodes: dict[str, Node]) -> dict[str, Any]:
    running = engine_running(vol)
    state = vol.state.value
    attached = state == "attached"
    st = vol.engine_status
    return {
        "name": vol.name,
        "size_bytes": vol.size_bytes,
        "replicas_wanted": vol.replicas_wanted,
        "state": state,
        "robustness": vol.robustness.value,
        "endpoint": st.endpoint if attached and st is not None else "",
        "attached_node": vol.attach_node,
        "epoch": vol.epoch,
        "generation": max(vol.current_generation, st.generation if st and running else 0),
        "reclaim_policy": vol.reclaim_policy,
        "zone_spread": vol.zone_spread,
        "node_tags": vol.node_tags,
        "disk_tags": vol.disk_tags,
        "stale_replica_timeout": vol.stale_replica_timeout,
        "source": vol.source.model_dump() if vol.source else None,
        "created_at": vol.created_at,
        # the manager's own complaint (placement, a fenced engine), else why the engine
        # last failed to start (e.g. it refused replicas older than the recorded generation)
        "error": vol.error or (st.error if st is not None and not running else ""),
        "engine": (
            {
                "node": vol.engine.node,
                "epoch": vol.engine.epoch,
                "purpose": vol.engine.purpose,
                "running": running,
            }
            if vol.engine
            else None
        ),
        "replicas": [
            replica_view(r, nodes.get(r.node), running)
            for r in sorted(replicas, key=lambda r: (r.node, r.id))
        ],
    }
