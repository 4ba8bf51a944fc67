"""The API's JSON for volumes and replicas: records plus what is derived from them
(state, robustness, endpoint), and the typed models of every answer (``VolumeView``,
``NodeView``, ...) that the routes declare, so the OpenAPI schema describes each answer
and FastAPI checks what goes out against it. Records that are served as they are
(``Disk``, ``Snapshot``, ``Operation``) are their own answer models. Shapes are
documented in docs/control-plane.md; tests/unit/control/test_api_schema.py checks live
answers against the published schema."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cargohold.control.model import (
    EngineStatus,
    NBDClient,
    Node,
    NodeState,
    QosLimits,
    Record,
    Replica,
    ReplicaMode,
    Robustness,
    ScrubSummary,
    Standby,
    Volume,
    VolumeSource,
    VolumeState,
)
from cargohold.control.standby import lag

ReplicaState = Literal["pending", "stopped", "running", "rebuilding", "failed", "deleting"]


class ReplicaView(Record):
    """One replica of a volume, as ``GET /api/v1/volumes/{volume}`` shows it."""

    id: str
    volume: str
    node: str
    disk: str
    mode: ReplicaMode | None = Field(description="the engine's view; null when none runs")
    generation: int
    rebuild_progress: float | None = Field(description="0..1 while rebuilding (WO)")
    state: ReplicaState
    evicting: bool = Field(description="on a drained node, waiting for its replacement")
    error: str
    epoch: int = Field(0, description="the newest epoch the replica accepted (its node says)")


class EngineView(Record):
    node: str
    epoch: int
    purpose: Literal["attach", "maintenance"]
    running: bool = Field(description="its node's agent reports it running at this epoch")


class QosView(Record):
    """A volume's QoS: the limits wanted, those its running engine applies (they differ
    for at most a second after a change), and how often the engine throttled it."""

    limits: QosLimits = Field(description="the volume's limits (unset: none)")
    applied: dict[str, int | float] | None = Field(
        None, description="the limits its running engine enforces (null: not running)"
    )
    throttled_requests_total: int = Field(0, description="requests that waited, this engine")
    throttled_seconds_total: float = Field(0.0, description="their waits, summed (0.1 s)")
    fair_iops: int | None = Field(
        None,
        description="the IOPS its node's agent holds it to while the node is busy (its "
        "weight's share; null: none)",
    )
    fair_bandwidth: int | None = Field(
        None,
        description="the bytes per second its node's agent holds it to while the node's "
        "bandwidth is busy (its weight's share; null: none)",
    )
    nice: int | None = Field(
        None,
        description="the CPU priority (nice value, 0-19) its node's agent gives its running "
        "engine from its weight (null: not running)",
    )


class StandbyLag(Record):
    """How far behind a standby is (control/standby.py ``lag``; null: not known yet)."""

    seconds: float | None = Field(
        description="how much older the applied backup is than the source's newest (0: in sync)"
    )
    data_age_seconds: float | None = Field(
        description="now minus the applied backup's time: the data lost if the source died now"
    )
    backups: int = Field(description="backups of the source not applied yet")
    since_poll_seconds: float | None = Field(description="since the target was last read")


class StandbyView(Standby):
    """A standby volume's record (docs/disaster-recovery.md) and its lag."""

    lag: StandbyLag


class DataKeyGenerationView(Record):
    """One kept generation of a volume's data key (never the key)."""

    generation: int
    created: float
    kept_for: str = Field(description="an older generation: what still needs it")


class RotationView(Record):
    """A volume's last data-key rotation and its engine's sweep (docs/keys.md)."""

    state: str = Field(description="running | waiting (for an engine: the next attach) | finished")
    generation: int = Field(description="the new data key's generation")
    started: float
    finished: float | None = None
    engine_state: str | None = Field(default=None, description="the engine's sweep state")
    groups_done: int | None = None
    groups_total: int | None = None
    blocks_rewritten: int | None = None
    progress: float | None = Field(default=None, description="0..1, groups swept")
    error: str = ""


class EncryptionView(Record):
    """An encrypted volume's key record as the API shows it: never the key, clear or
    wrapped (docs/keys.md)."""

    id: str = Field(description="the encryption id bound into every block (hex)")
    provider: str = Field(description="file | kms: who holds the key-encryption key")
    key_ref: str = Field(description="the key-encryption key: a key name or a KMS key id")
    created: float
    rekeyed_at: float | None = None
    shredded: bool = Field(description="the data key was destroyed (volume delete --shred)")
    stored_bytes: int = Field(description="bytes each replica holds (ciphertext and tags)")
    generation: int = Field(default=0, description="the newest data key's generation")
    generations: list[DataKeyGenerationView] = Field(
        default_factory=list, description="the data-key generations kept, newest first"
    )
    rotation: RotationView | None = Field(
        default=None, description="the last data-key rotation (volume rekey --data-key)"
    )


class VolumeView(Record):
    """``GET /api/v1/volumes/{volume}``: the fields scripts rely on."""

    name: str
    size_bytes: int
    replicas_wanted: int
    state: VolumeState
    robustness: Robustness
    endpoint: str = Field(
        description="nbd://HOST:PORT/NAME (nbds:// when NBD over TLS) when attached, else empty"
    )
    attached_node: str | None
    attached_read_only: bool = Field(
        False, description="attached read-only: NBD clients may only read (a standby's only way)"
    )
    epoch: int
    generation: int
    reclaim_policy: Literal["Delete", "Retain"]
    zone_spread: bool
    node_tags: list[str]
    disk_tags: list[str]
    stale_replica_timeout: float
    source: VolumeSource | None
    created_at: float
    error: str
    engine: EngineView | None
    replicas: list[ReplicaView]
    last_scrub: ScrubSummary | None = Field(
        None, description="the last scrub pass that ended (null: none recorded yet)"
    )
    tenant: str | None = Field(None, description="whose volume (null: the provider's own)")
    labels: dict[str, str] = Field(default_factory=dict, description="recurring jobs select by")
    nbd_clients: list[NBDClient] = Field(
        default_factory=list,
        description="NBD clients connected to the engine as its node last reported (a "
        "heartbeat, ~2 s, behind): a detach is refused while there are any, unless forced",
    )
    qos: QosView | None = Field(None, description="QoS limits and throttling (docs/qos.md)")
    standby: StandbyView | None = Field(
        None, description="a disaster-recovery standby's state and lag (null: a normal volume)"
    )
    encryption: EncryptionView | None = Field(
        None, description="encrypted at rest: its key record, never the key (docs/keys.md)"
    )


class TenantView(Record):
    """``GET /api/v1/tenants/{tenant}``: a tenant, its quota and what it uses."""

    name: str
    quota_bytes: int | None = Field(description="null: no quota")
    used_bytes: int = Field(
        description="provisioned size of its volumes (a pending expansion at its target)"
    )
    volumes: int
    created_at: float


class NodeView(Record):
    """``GET /api/v1/nodes/{node}``: the ``Node`` record's fields and its derived ``state``
    (up, down when ``down_since`` is set, else cordoned when ``cordoned``)."""

    name: str
    zone: str
    address: str
    replica_port: int
    tags: list[str]
    cordoned: bool
    draining: bool
    heartbeat_at: float
    down_since: float | None
    registered_at: float
    agent_pid: int | None
    error: str = Field("", description="what the node's agent refuses to do for this manager")
    agent_version: str = Field(
        "",
        description="cargohold's version on the node, as its agent last reported it to "
        'this manager ("": not heard since this manager started, or an agent older than '
        "version reporting)",
    )
    state: NodeState


class VolumeCounts(Record):
    total: int
    healthy: int
    degraded: int
    faulted: int
    attached: int


class StatusView(Record):
    backend: str
    manager: str
    leader: str | None
    nodes: dict[NodeState, int]
    volumes: VolumeCounts
    capacity_bytes: int
    allocated_bytes: int
    cluster_id: str = Field("", description="the cluster the state store belongs to")


class Health(Record):
    ok: bool
    leader: bool = Field(description="whether this manager leads")
    manager: str
    backend: str
    version: str = Field("", description="cargohold's version on this manager")


class AttachmentView(Record):
    volume: str
    node: str
    endpoint: str
    epoch: int
    state: VolumeState


class ErrorDetail(BaseModel):
    type: str = Field(description="the error class: NotFound, WrongState, Unschedulable, ...")
    message: str


class ErrorBody(BaseModel):
    """Every error answer; a 422 also carries FastAPI's ``detail`` list."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail
    detail: list[dict[str, Any]] | None = None


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
    state = replica_state(rep, node, engine_running)
    mode = rep.mode.value if rep.mode and engine_running else None
    if mode is not None and state == "failed":
        # its node is down: an idle engine still says RW until its next I/O drops the
        # replica; what it will say, and what the docs show, is ERR
        mode = ReplicaMode.ERR.value
    return {
        "id": rep.id,
        "volume": rep.volume,
        "node": rep.node,
        "disk": rep.disk,
        "mode": mode,
        "generation": rep.generation,
        "rebuild_progress": rep.rebuild_progress if rep.mode is ReplicaMode.WO else None,
        "state": state,
        "evicting": rep.evicting,
        "error": rep.error,
        "epoch": rep.epoch,
    }


NOT_RESTORED = {"restoring": Robustness.UNKNOWN, "failed": Robustness.FAULTED}


def qos_view(vol: Volume, st: EngineStatus | None) -> dict[str, Any]:
    rep = st.qos if st is not None else {}
    return {
        "limits": vol.qos.model_dump(exclude_none=True),
        "applied": rep.get("limits") if st is not None else None,
        "throttled_requests_total": int(rep.get("throttled_requests_total", 0)),
        "throttled_seconds_total": float(rep.get("throttled_seconds_total", 0.0)),
        "fair_iops": rep.get("fair_iops"),  # held to its share of a busy node; null: not
        "fair_bandwidth": rep.get("fair_bandwidth"),
        "nice": rep.get("nice") if st is not None else None,
    }


def volume_view(vol: Volume, replicas: list[Replica], nodes: dict[str, Node]) -> dict[str, Any]:
    running = vol.engine_runs
    state = vol.state.value
    attached = state == "attached"
    st = vol.engine_status
    return {
        "name": vol.name,
        "size_bytes": vol.size_bytes,
        "replicas_wanted": vol.replicas_wanted,
        "state": state,
        # a restore not done is never presented as healthy (its replicas hold part of it)
        "robustness": NOT_RESTORED.get(state, vol.robustness).value,
        "endpoint": st.endpoint if attached and st is not None else "",
        "attached_node": vol.attach_node,
        "attached_read_only": vol.attach_node is not None and vol.attach_read_only,
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
        "last_scrub": vol.last_scrub.model_dump() if vol.last_scrub else None,
        "tenant": vol.tenant,
        "labels": vol.labels,
        "nbd_clients": [c.model_dump() for c in st.nbd_clients] if st and running else [],
        "qos": qos_view(vol, st if running else None),
        "encryption": encryption_view(vol),
        "standby": (
            {**vol.standby.model_dump(), "lag": lag(vol.standby, time.time())}
            if vol.standby
            else None
        ),
    }


def encryption_view(vol: Volume) -> dict[str, Any] | None:
    enc = vol.encryption
    if enc is None:
        return None
    return {
        "id": enc.id,
        "provider": enc.provider,
        "key_ref": enc.key_ref,
        "created": enc.created,
        "rekeyed_at": enc.rekeyed_at,
        "shredded": not enc.wrapped_key,
        "stored_bytes": vol.stored_bytes,
        # the data-key generations kept, newest first (never a key, wrapped or clear)
        "generation": enc.keys[0].generation if enc.keys else 0,
        "generations": [
            {"generation": k.generation, "created": k.created, "kept_for": k.kept_for}
            for k in enc.keys
        ],
        "rotation": rotation_view(vol),
    }


def rotation_view(vol: Volume) -> dict[str, Any] | None:
    """The volume's last data-key rotation: its state (``waiting``: running, but no engine
    runs the volume: it runs at the next attach), the engine's progress of its sweep."""
    enc = vol.encryption
    rot = enc.rotation if enc is not None else None
    if rot is None:
        return None
    state: str = rot.state
    if state == "running" and not vol.engine_runs:
        state = "waiting"
    p = rot.progress
    total = p.get("groups_total")
    return {
        "state": state,
        "generation": rot.generation,
        "started": rot.started,
        "finished": rot.finished,
        "engine_state": p.get("state"),
        "groups_done": p.get("groups_done"),
        "groups_total": total,
        "blocks_rewritten": p.get("blocks_rewritten"),
        "progress": (
            min(1.0, int(p.get("groups_done") or 0) / total)
            if isinstance(total, int) and total > 0
            else (1.0 if rot.state == "finished" else None)
        ),
        "error": p.get("error") or "",
    }
