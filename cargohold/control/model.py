# size: one pydantic model per record, the API's and the state store's shapes in one place
"""The control plane's records: what the manager stores, serves over its API, and what the
node agents report and receive. One pydantic model per record; the JSON shapes are the API's
(documented in docs/control-plane.md and published as OpenAPI).

Records live in the state store as JSON under these keys (see ``keys``):

    /nodes/<node>                     Node          registered by its agent, heartbeats
    /disks/<node>/<disk>              Disk          a directory (or device) on a node
    /volumes/<volume>                 Volume        spec (size, replicas wanted) + status
    /replicas/<volume>/<replica>      Replica       one copy of a volume on a node's disk
    /snapshots/<volume>/<snapshot>    Snapshot
    /group-snapshots/<name>           GroupSnapshot snapshots of several volumes at one point
    /operations/<id>                  Operation     long-running work: snapshots, expand, clone, scrub
    /backup-targets/<name>            BackupTarget  an object store or path backups go to
    /backup-target-secrets/<name>     TargetSecrets its credentials and repository key (never served)
    /backups/<id>                     Backup        one backup of a volume in a target's repository
    /cluster                          Cluster       the cluster's identity, made with the store
    /tombstones/<volume>/<replica>    Tombstone     a replica the manager deleted (kept tombstone_ttl)
    /orphans/<node>/<replica>         Orphan        on a node's disk, in no record: kept, reported
    /events/<time>-<id>               Event         what happened (newest 1000 kept)
    /tenants/<tenant>                 Tenant        a tenant's quota (access.py, tenancy.py)
    /tokens/<id>                      ApiToken      a bearer token of the REST API (access.py)
    /jobs/<job>                       RecurringJob  a recurring snapshot/backup job (jobs.py)
    /jobruns/<job>/<volume>           JobRun        its run state on one volume (jobs.py)
    /leader/<role>                    (election)

Times are seconds since the epoch (float) on the manager's clock.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from cargohold import qos_limits
from cargohold.encryption import layout
from cargohold.errors import InvalidArgument

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")  # a DNS-1123 label (dots ok)
# The schema's form of it (OpenAPI ``pattern``); API request models name their fields with
# ``name_field()`` so that clients see the rule, and strict types (StrictInt, ...): a JSON
# request's "4096" or 4096.0 is not an integer, nor "true" a boolean.
NAME_PATTERN = NAME_RE.pattern


BACKUP_ID_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,126}[a-z0-9])?$"  # a backup's id (bk-<volume>-...)
RESTORE_FAILED = "restore failed: "  # how a failed restore's error starts (Volume.state)


def name_field(**kw: Any) -> Any:
    """A name of the API (volume, snapshot, disk, node): pattern and length in the schema."""
    return Field(pattern=NAME_PATTERN, min_length=1, max_length=63, **kw)


def check_name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not valid: use 1-63 lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- nodes and disks -------------------------------------------------------------------
class NodeState(StrEnum):
    UP = "up"
    DOWN = "down"
    CORDONED = "cordoned"


class Node(Record):
    name: str
    zone: str = ""
    address: str  # where its replica server and engines listen
    replica_port: int = 0  # the replica server's port (0 until it runs)
    tags: list[str] = Field(default_factory=list)
    cordoned: bool = False  # no new replicas or engines here
    draining: bool = False  # cordoned, and its replicas are being moved away
    heartbeat_at: float = 0.0
    down_since: float | None = None  # set by the node reconciler when heartbeats stop
    registered_at: float = 0.0
    agent_pid: int | None = None  # local clusters: for `cargohold node kill`
    error: str = ""  # what the agent refuses to do (e.g. a cluster id mismatch), if anything

    @property
    def state(self) -> NodeState:
        if self.down_since is not None:
            return NodeState.DOWN
        return NodeState.CORDONED if self.cordoned else NodeState.UP

    def view(self) -> dict[str, Any]:
        """The API's JSON: the record plus its derived ``state``."""
        return {**self.model_dump(), "state": self.state.value}


class Disk(Record):
    node: str
    name: str
    path: str
    capacity_bytes: int = Field(ge=0)
    tags: list[str] = Field(default_factory=list)
    schedulable: bool = True
    # the node's agent looked at the path (``DiskCheck``): ``error`` when it cannot serve it
    # (no such directory: nothing is placed there), ``warning`` e.g. not a mount point
    checked: bool = False
    error: str = ""
    warning: str = ""


# --- volumes and replicas ---------------------------------------------------------------
class VolumeState(StrEnum):
    CREATING = "creating"  # replicas being placed and created (and data cloned in)
    DETACHED = "detached"
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DELETING = "deleting"
    RELEASED = "released"  # deleted with reclaim policy Retain: data kept, not attachable
    RESTORING = "restoring"  # a backup being written into it: not usable until done
    FAILED = "failed"  # its restore failed: never usable (delete it, restore again)


class Robustness(StrEnum):
    HEALTHY = "healthy"  # every wanted replica current
    DEGRADED = "degraded"  # serving, fewer current replicas than wanted
    FAULTED = "faulted"  # no current replica reachable
    UNKNOWN = "unknown"  # detached and never checked


class ReplicaMode(StrEnum):
    RW = "RW"  # current, in the write set, serves reads
    WO = "WO"  # being rebuilt: receives writes, serves no reads
    ERR = "ERR"  # dropped by the engine


class VolumeSource(Record):
    """Where a new volume's data comes from: a volume (a clone, of ``snapshot`` or of a
    snapshot taken now) or a backup (a restore; ``target`` is filled in by the manager)."""

    # the schema says what _one_source checks: a volume (and maybe a snapshot) or a backup
    model_config = {
        "json_schema_extra": {
            "oneOf": [
                {
                    "required": ["volume"],
                    "properties": {"volume": {"type": "string"}, "backup": {"type": "null"}},
                },
                {
                    "required": ["backup"],
                    "properties": {
                        "backup": {"type": "string"},
                        "volume": {"type": "null"},
                        "snapshot": {"type": "null"},
                    },
                },
            ]
        }
    }

    volume: str | None = name_field(default=None)
    snapshot: str | None = name_field(default=None)
    backup: str | None = Field(default=None, pattern=BACKUP_ID_PATTERN, max_length=128)
    target: str | None = name_field(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> VolumeSource:
        if (self.volume is None) == (self.backup is None):
            raise ValueError("a source names either a volume (a clone) or a backup (a restore)")
        if self.backup is not None and self.snapshot is not None:
            raise ValueError("a restore's source is a backup: it takes no snapshot")
        return self


_IOPS_LO, _IOPS_HI = qos_limits.MIN_IOPS, qos_limits.MAX_IOPS
_BW_LO, _BW_HI = qos_limits.MIN_BANDWIDTH, qos_limits.MAX_BANDWIDTH


class QosLimits(Record):
    """A volume's QoS limits (docs/qos.md), each optional: unset (null) means no limit.
    IOPS count one operation per started 256 KiB of a request; bandwidths are bytes/s."""

    max_iops: StrictInt | None = Field(None, ge=_IOPS_LO, le=_IOPS_HI, description="all")
    max_read_iops: StrictInt | None = Field(None, ge=_IOPS_LO, le=_IOPS_HI)
    max_write_iops: StrictInt | None = Field(None, ge=_IOPS_LO, le=_IOPS_HI)
    max_bandwidth: StrictInt | None = Field(None, ge=_BW_LO, le=_BW_HI, description="bytes/s")
    max_read_bandwidth: StrictInt | None = Field(None, ge=_BW_LO, le=_BW_HI)
    max_write_bandwidth: StrictInt | None = Field(None, ge=_BW_LO, le=_BW_HI)
    burst_seconds: float | None = Field(
        default=None,
        ge=0,
        le=qos_limits.MAX_BURST_SECONDS,
        description="an idle volume may run this many seconds' worth of its limits ahead",
    )
    weight: StrictInt | None = Field(
        default=None,
        ge=qos_limits.MIN_WEIGHT,
        le=qos_limits.MAX_WEIGHT,
        description="share of a busy node's IOPS budget, relative to the other volumes "
        "there (unset: 100)",
    )
    min_iops: StrictInt | None = Field(
        None, ge=_IOPS_LO, le=_IOPS_HI, description="IOPS guaranteed on a busy node"
    )

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, dict):  # the errors name the limit and its allowed values
            try:
                qos_limits.check(data)
            except InvalidArgument as e:
                raise ValueError(str(e)) from None
        return data

    def limits(self) -> dict[str, int | float]:
        """The canonical dict (only the limits set): what engines are given."""
        return qos_limits.check(self.model_dump(exclude_none=True))


class StandbyState(StrEnum):
    """Where a standby volume is (docs/disaster-recovery.md)."""

    FOLLOWING = "following"  # holds its last complete backup; polls for a newer one
    APPLYING = "applying"  # an apply (restore of the delta, then its snapshot) is running
    ACTIVATING = "activating"  # asked to become a normal volume: settling what runs
    ACTIVE = "active"  # a normal volume now (attachable read-write); the rest is history


class Standby(Record):
    """A standby volume follows the backups of a volume of another cluster in a target
    (docs/disaster-recovery.md). ``applied`` is the last complete state: a ready snapshot
    (``applied_snapshot``) holds it; anything written after it is reverted before the next
    apply and at activation."""

    target: str  # the backup target (of this cluster) the source backs up into
    source_volume: str  # the source volume's name, in the other cluster
    source_volume_id: str = ""  # its uid in the backups (a recreated source is another one)
    state: StandbyState = StandbyState.FOLLOWING
    applied: str = ""  # the repository id of the last complete backup
    applied_created: float = 0.0  # when that backup was made (in the source cluster)
    applied_snapshot: str = ""  # the snapshot of this volume holding it
    applying: str = ""  # the repository id being applied ("" when none)
    applying_created: float = 0.0
    phase: Literal["", "restore", "seal", "revert"] = ""  # the step running
    operation: str = ""  # its operation's id
    snapshot: str = ""  # the snapshot the running seal makes
    dirty: bool = False  # blocks may differ from applied_snapshot (an apply began)
    newest: str = ""  # the source's newest backup at the last poll
    newest_created: float = 0.0
    behind: int = 0  # backups of the source newer than ``applied``
    last_poll: float = 0.0  # when the target's catalog was last read
    poll_error: str = ""  # why the last poll failed ("" when it did not)
    applies: int = 0  # complete applies
    last_apply: dict[str, Any] = Field(default_factory=dict)  # its result (bytes, seconds)
    activated_at: float = 0.0


class EngineSpec(Record):
    """Where the volume's engine runs, and with which epoch and replicas."""

    node: str
    epoch: int = Field(ge=1)
    purpose: Literal["attach", "maintenance"] = "attach"
    replicas: list[str] = Field(default_factory=list)  # replica ids, in the write set
    require_epoch: int = 0  # refuse to start from replicas older than (epoch, generation)
    require_generation: int = 0
    epoch_jump: bool = False  # soon after `volume recover-epoch`: replicas may jump epochs
    read_only: bool = False  # NBD clients may only read (an attach with read_only)
    encrypted: bool = False  # the engine serves the volume through its block cipher (issue 19)


class WrappedDataKey(Record):
    """One generation of a volume's data key, wrapped by the volume's KEK (never clear)."""

    generation: int = Field(ge=1)  # 1 at creation, +1 per data-key rotation
    wrapped_key: str = Field(repr=False)  # base64 of the provider's blob
    created: float = 0.0
    kept_for: str = ""  # an older generation: why it is still kept (snapshots, a sweep)


class KeyRotation(Record):
    """A volume's last data-key rotation (``volume rekey --data-key``): its engine rewrites
    every block under generation ``generation`` (docs/keys.md)."""

    state: Literal["running", "finished"] = "running"
    generation: int = Field(ge=1)  # the new data key's
    started: float = 0.0
    finished: float | None = None
    progress: dict[str, Any] = Field(default_factory=dict)  # the engine's last ``rekey`` status
    # generations a snapshot revert brought back while it ran: its "done" may predate the
    # revert, so the volume keeps them past its end (until the next rotation finishes)
    reverted: list[int] = Field(default_factory=list)


class VolumeEncryption(Record):
    """An encrypted volume's key record (issue 19, docs/keys.md): its data keys wrapped by a
    key-encryption key (never a clear key), and the encryption id bound into its blocks.
    ``keys``: every generation still kept, newest first (control/key_generations.py);
    ``wrapped_key`` mirrors the newest one's (what records before data-key rotation had,
    read as generation 1). Both are empty once destroyed (``volume delete --shred``)."""

    id: str = Field(pattern=r"^[0-9a-f]{32}$")  # 16 random bytes, hex; a clone keeps it
    provider: str  # file | kms (memory: unit tests)
    key_ref: str  # the KEK: a key name (file) or a KMS key id
    wrapped_key: str = Field(default="", repr=False)  # base64 of the provider's blob
    created: float = 0.0
    rekeyed_at: float | None = None  # the last rewrap under another KEK
    shredded_at: float | None = None  # the wrapped key destroyed then
    keys: list[WrappedDataKey] = Field(default_factory=list, max_length=8)
    # the generations the volume's own blocks may be under ([]: every kept one)
    head_generations: list[int] = Field(default_factory=list)
    rotation: KeyRotation | None = None

    @model_validator(mode="after")
    def _generations(self) -> VolumeEncryption:
        if not self.keys and self.wrapped_key:  # a record from before data-key rotation
            self.keys = [WrappedDataKey(generation=1, wrapped_key=self.wrapped_key)]
            self.keys[0].created = self.created
        elif self.keys:
            self.wrapped_key = self.keys[0].wrapped_key
        return self


class ScrubSummary(Record):
    """The last scrub pass of a volume that ended (succeeded), as its engine reported it:
    kept on the volume so that the next engine (another node, a restart) knows when the
    next periodic pass is due, and shown in ``volume get``."""

    ended_at: float  # wall-clock seconds
    reason: str = ""  # periodic | requested
    checked_blocks: int = 0
    found: int = 0  # bad blocks found
    repaired: int = 0
    unrepaired: int = 0
    # the comparison of the replicas with each other in that pass (checksum maps)
    compared_replicas: int = 0  # how many current replicas were compared (< 2: none)
    diverged_found: int = 0  # blocks on which they disagreed
    diverged_repaired: int = 0  # ... copied from the current replica and agreeing now
    diverged_unrepaired: int = 0  # ... left as they were (undecidable, or a snapshot layer)


class NBDClient(Record):
    """One NBD client using a volume's export, as its engine last reported it."""

    peer: str = Field(description="the client's address (\"unix\": the engine's unix socket)")
    export: str = Field(description="the export's name (the volume's)")


class EngineStatus(Record):
    """What the engine's node agent last reported of it."""

    node: str
    epoch: int
    running: bool
    endpoint: str = ""  # nbd://HOST:PORT/NAME (nbds:// when NBD over TLS)
    generation: int = 0
    size_bytes: int = 0
    robustness: Robustness = Robustness.UNKNOWN
    error: str = ""
    reported_at: float = 0.0
    nbd_clients: list[NBDClient] = Field(default_factory=list)  # connected past the handshake
    qos: dict[str, Any] = Field(default_factory=dict)  # limits applied, throttle counters


class Volume(Record):
    name: str
    size_bytes: int = Field(gt=0)
    replicas_wanted: int = Field(ge=1, le=16)
    zone_spread: bool = True  # distinct zones where zones exist
    node_tags: list[str] = Field(default_factory=list)
    disk_tags: list[str] = Field(default_factory=list)
    reclaim_policy: Literal["Delete", "Retain"] = "Delete"
    stale_replica_timeout: float = Field(default=30.0, ge=0)  # seconds a replica may be away
    source: VolumeSource | None = None
    created_at: float = 0.0
    # desired
    attach_node: str | None = None  # where the user wants it attached
    attach_read_only: bool = False  # ... read-only (a standby before activation: only so)
    engine: EngineSpec | None = None  # where the engine should run (reconciler's decision)
    epoch: int = 0  # the newest epoch handed out; every new engine bumps it
    recovered_epoch: int = 0  # the epoch `volume recover-epoch` raised it to (0: never)
    deleting: bool = False
    released: bool = False
    initialized: bool = True  # False for a clone until its data has been copied in
    # observed
    engine_status: EngineStatus | None = None
    current_epoch: int = 0  # the newest (epoch, generation) engines reported: replicas older
    current_generation: int = 0  # than this never start an engine (invariant 4)
    robustness: Robustness = Robustness.UNKNOWN
    error: str = ""
    last_scrub: ScrubSummary | None = None
    tenant: str | None = None  # whose (None: the provider's own); never changes
    labels: dict[str, str] = Field(default_factory=dict)  # e.g. recurring-job.cargohold.io/J
    qos: QosLimits = Field(default_factory=QosLimits)  # changed online (PATCH)
    standby: Standby | None = None  # a disaster-recovery standby (docs/disaster-recovery.md)
    # encrypted at rest (issue 19): ``size_bytes`` is the logical size users see; replicas
    # and the engine's volume have ``stored_bytes`` (encryption/layout.py)
    encryption: VolumeEncryption | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "volume name")

    @property
    def stored_bytes(self) -> int:
        """Bytes of the plain volume its replicas and engine hold: ``size_bytes``, or for an
        encrypted volume its physical size (ciphertext and tag blocks)."""
        if self.encryption is None:
            return self.size_bytes
        return layout.physical_size(self.size_bytes)

    @property
    def engine_runs(self) -> bool:
        """The engine the manager wants runs: its node's agent reports an engine running
        at the wanted engine's epoch, on the wanted engine's node.

        The one definition of "the engine is running" (reconcilers, heartbeat, views and
        the API's ``engine.running`` read it). An engine of an older epoch, or one that
        still runs on a node the engine moved away from, is not "the engine": it is being
        stopped (see ``state``: ``detaching``)."""
        st = self.engine_status
        return bool(
            st is not None
            and st.running
            and self.engine is not None
            and st.epoch == self.engine.epoch
            and st.node == self.engine.node
        )

    @property
    def attached(self) -> bool:
        """The volume is attached where the user wants it: ``engine_runs``, the engine is an
        attach engine (not a maintenance one), and it runs on ``attach_node`` (not the old
        engine of a takeover). The one definition of "attached": the API's ``state``
        ``attached`` (and so the client's ``volume_attached``) is this."""
        return (
            self.engine_runs
            and self.engine is not None
            and self.engine.purpose == "attach"
            and self.attach_node is not None
            and self.engine.node == self.attach_node
        )

    @property
    def state(self) -> VolumeState:
        if self.released:
            return VolumeState.RELEASED
        if self.deleting:
            return VolumeState.DELETING
        st = self.engine_status
        if self.attach_node is not None:
            return VolumeState.ATTACHED if self.attached else VolumeState.ATTACHING
        if (
            st is not None
            and st.running
            and (
                self.engine is None
                or st.epoch != self.engine.epoch
                or self.engine.purpose == "attach"
            )
        ):
            return VolumeState.DETACHING  # an engine the volume no longer wants is stopping
        if not self.initialized:
            if self.source is not None and self.source.backup is not None:
                failed = self.error.startswith(RESTORE_FAILED)
                return VolumeState.FAILED if failed else VolumeState.RESTORING
            return VolumeState.CREATING
        return VolumeState.DETACHED


class Replica(Record):
    id: str
    volume: str
    node: str
    disk: str  # the disk's name on that node
    disk_path: str = ""
    size_bytes: int = 0
    created_at: float = 0.0
    # desired
    deleting: bool = False  # the agent removes it from disk, then the record goes
    evicting: bool = False  # being replaced (drain); removed once a replacement is current
    # observed
    exists: bool = False  # the agent reported it on its replica server
    mode: ReplicaMode | None = None  # from the engine, while one runs
    generation: int = 0  # complete-through generation (the engine's view, or the replica's)
    rebuild_progress: float | None = None  # 0..1 while rebuilding
    failed_at: float | None = None  # first time seen ERR or its node down
    error: str = ""
    epoch: int = 0  # the newest epoch the replica accepted, as its node reported it


class SnapshotState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    DELETING = "deleting"
    ERROR = "error"


class Snapshot(Record):
    volume: str
    name: str
    state: SnapshotState = SnapshotState.PENDING
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: float = 0.0
    size_bytes: int = 0
    error: str = ""
    # an encrypted volume's: the data-key generations its blocks may be under ([]: every
    # generation its volume keeps; docs/keys.md)
    key_generations: list[int] = Field(default_factory=list)


class OperationKind(StrEnum):
    SNAPSHOT_CREATE = "snapshot-create"
    SNAPSHOT_DELETE = "snapshot-delete"
    SNAPSHOT_REVERT = "snapshot-revert"
    EXPAND = "expand"
    CLONE = "clone"  # import a source volume's snapshot into a new volume
    SCRUB = "scrub"  # verify every replica's blocks, repair bad ones from a healthy replica
    BACKUP = "backup"  # read a snapshot from a replica, write it to a backup repository
    RESTORE = "restore"  # write a backup into a new volume through its engine
    HOLD = "hold"  # hold the engine's writes for a group snapshot (released by itself later)
    RELEASE = "release"  # end a group snapshot's hold
    SNAPSHOT_METADATA = "snapshot-metadata"  # a page of a snapshot's allocated/changed blocks


class GroupSnapshotState(StrEnum):
    HOLDING = "holding"  # the volumes' writes are being held, one after another
    SNAPSHOTTING = "snapshotting"  # all held: each volume's snapshot is being taken
    RELEASING = "releasing"  # the holds are being released (then ready, or failed)
    READY = "ready"
    FAILED = "failed"  # nothing of it is left: its snapshots taken were deleted
    DELETING = "deleting"


class GroupSnapshot(Record):
    """Snapshots of several volumes at one crash-consistent point (control/group_snapshots.py):
    a snapshot named ``name`` on each volume, taken while all of their writes were held."""

    name: str
    volumes: list[str]  # in the order they are held
    state: GroupSnapshotState = GroupSnapshotState.HOLDING
    hold_seconds: float = 30.0  # the longest each volume's writes stay held
    ops: dict[str, str] = Field(default_factory=dict)  # volume -> its operation of this step
    error: str = ""
    created_at: float = 0.0
    ready_at: float | None = None


class OperationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Operation(Record):
    id: str
    kind: OperationKind
    volume: str
    args: dict[str, Any] = Field(default_factory=dict)
    state: OperationState = OperationState.PENDING
    progress: float = 0.0
    error: str = ""
    result: dict[str, Any] = Field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state in (OperationState.SUCCEEDED, OperationState.FAILED)


# --- the agent's heartbeat: report in, assignments out ----------------------------------
class Message(BaseModel):
    """A message of the heartbeat exchange (agent -> manager reports, manager -> agent
    assignments). Unlike stored records and API requests, a message ignores fields it does
    not know: a manager and agents one version apart keep working during a rolling upgrade
    (an older agent runs what it understands of a newer manager's assignments)."""

    model_config = ConfigDict(extra="ignore")


class ReplicaReport(Message):
    id: str
    volume: str
    disk_path: str = ""
    size_bytes: StrictInt = 0
    generation: StrictInt = 0
    epoch: StrictInt = 0
    seen: StrictInt = 0  # the highest generation it has seen written (complete or not)
    history: list[list[StrictInt]] = Field(default_factory=list)  # [[epoch, first_generation], ...]
    snapshots: list[str] = Field(default_factory=list)  # snapshot names
    cluster_id: str = ""  # stamped at CREATE ("" for replicas older than cluster ids)
    disk_cluster_id: str = ""  # the stamp of the disk it lives on ("" when unstamped)


class EngineReport(Message):
    volume: str
    epoch: StrictInt
    running: StrictBool
    endpoint: str = ""
    error: str = ""
    status: dict[str, Any] = Field(default_factory=dict)  # the engine's own `status`


class OperationReport(Message):
    id: str
    state: OperationState
    progress: StrictFloat = 0.0
    error: str = ""
    result: dict[str, Any] = Field(default_factory=dict)


class DiskReport(Message):
    name: str
    path: str
    capacity_bytes: StrictInt = Field(ge=0)
    tags: list[str] = Field(default_factory=list)


class DiskCheck(Message):
    """What an agent found at the path of a disk it was asked to serve (``disk add``):
    ``error`` when it serves nothing there (no such directory, a path outside its roots),
    ``warning`` when it serves it with a caveat (not a mount point)."""

    name: str
    path: str
    error: str = ""
    warning: str = ""


class Registration(Message):
    """PUT /api/v1/nodes/{name}: the agent says who it is (idempotent)."""

    zone: str = ""
    address: str
    replica_port: StrictInt = Field(default=0, ge=0, le=65535)
    tags: list[str] = Field(default_factory=list)
    disks: list[DiskReport] = Field(default_factory=list)
    agent_pid: StrictInt | None = None
    agent_version: str = ""  # cargohold's version on the node ("": older than reporting it)


class Heartbeat(Message):
    """POST /api/v1/nodes/{name}/heartbeat: what runs on the node now.

    A long poll: with ``assignments_revision`` the revision of the assignments the agent
    has, and ``hold`` > 0, the manager holds its answer until the node's assignments
    change or ``hold`` (at most ``heartbeat_interval``) seconds pass."""

    replica_port: StrictInt = Field(default=0, ge=0, le=65535)
    replicas: list[ReplicaReport] = Field(default_factory=list)
    engines: list[EngineReport] = Field(default_factory=list)
    operations: list[OperationReport] = Field(default_factory=list)
    assignments_revision: str = ""  # the ``revision`` of the last assignments received
    hold: StrictFloat = Field(default=0.0, ge=0, le=60)  # seconds the agent lets the answer wait
    # a digest of replica_port, replicas, engines and operations; with ``same_report`` the
    # lists are left out: "what I reported last time" (answered ``resend`` if unknown)
    report_digest: str = ""
    same_report: StrictBool = False
    # what the agent refuses to do for this manager (a cluster id mismatch); "" when nothing
    refusal: str = ""
    # cargohold's version on the node (control/version_skew.py: the manager refuses an
    # agent more than one minor version apart); "" from agents older than reporting it
    agent_version: str = ""
    disk_checks: list[DiskCheck] = Field(default_factory=list)  # the disks it was asked for


class ReplicaAssignment(Message):
    id: str
    volume: str
    size_bytes: int
    disk_path: str
    delete: bool = False


class EngineAssignment(Message):
    volume: str
    epoch: int
    size_bytes: int
    replicas: list[str]  # ID@HOST:PORT, the write set to start with / converge to
    local: str | None = None  # the replica on this node, read first
    require_epoch: int = 0
    require_generation: int = 0
    purpose: Literal["attach", "maintenance"] = "attach"
    last_scrub_at: float = 0.0  # the volume's last scrub pass ended then (0: never)
    epoch_jump: bool = False  # after `volume recover-epoch`: OPEN may jump epochs
    read_only: bool = False  # NBD clients may only read (a read-only attach)
    qos: dict[str, int | float] = Field(default_factory=dict)  # QoS limits (docs/qos.md)
    # encrypted at rest (docs/keys.md): the agent fetches the data key (POST
    # /api/v1/volumes/{volume}/data-key) and hands it to the engine through a pipe
    encrypted: bool = False
    encryption_id: str = ""
    # the newest data-key generation (0: not told): a running engine given an older one
    # gets the newer keys (engine op ``data-keys``); ``rekey``: a rotation runs, the
    # engine should sweep its blocks under it
    data_key_generation: int = 0
    rekey: bool = False
    # how many generations the volume keeps (0: not told): a running engine that holds
    # more, its sweep done, is given the shorter list (the dropped keys leave its memory)
    data_keys: int = 0


class OperationAssignment(Message):
    id: str
    kind: OperationKind
    volume: str
    args: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)  # never stored, never logged


class Assignments(Message):
    """The heartbeat's answer: everything that should run on the node. Level-triggered: the
    agent converges to it; anything it runs that is not listed, it stops."""

    replicas: list[ReplicaAssignment] = Field(default_factory=list)
    engines: list[EngineAssignment] = Field(default_factory=list)
    operations: list[OperationAssignment] = Field(default_factory=list)
    disks: list[DiskReport] = Field(default_factory=list)  # every disk the node should serve
    heartbeat_interval: float = 1.0
    cluster_id: str = ""  # the manager's cluster: agents stamp disks with it, act only for it
    revision: str = ""  # a digest of everything above: equal revisions, equal assignments
    # after a hold that ended with nothing new: no lists, keep the assignments you have
    unchanged: bool = False
    resend: bool = False  # the report's digest is unknown here: send the whole report now


# --- cluster identity, tombstones, orphans, events -------------------------------------
CLUSTER_ID_RE = re.compile(r"^c-[0-9a-f]{32}$")


class Cluster(Record):
    """The cluster's identity: created with the state store (``cargohold manager --init``),
    stamped on every node's disks and every replica. Agents act only for a manager whose
    cluster id is their disks'."""

    id: str
    created_at: float = 0.0

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not CLUSTER_ID_RE.match(v):
            raise ValueError(f"cluster id {v!r} is not c-<32 hex digits>")
        return v


class Tombstone(Record):
    """Positive evidence that a replica was deleted: written in the same transaction that
    removes its record, kept ``tombstone_ttl``. An agent deletes a replica that has no record
    only when its tombstone exists (and the cluster ids match)."""

    replica: str
    volume: str
    node: str
    cluster_id: str = ""
    deleted_at: float = 0.0
    reason: str = ""  # volume deleted | replica deleted | orphan deleted | orphan grace
    done_at: float | None = None  # when its node no longer reported the replica


class Orphan(Record):
    """A replica on a node's disk that no record names and no tombstone condemns: kept, and
    reported, with what ``volume adopt`` needs to rebuild its volume's records."""

    id: str
    volume: str
    node: str
    disk_path: str = ""
    size_bytes: int = 0
    generation: int = 0
    seen: int = 0
    epoch: int = 0
    history: list[list[StrictInt]] = Field(default_factory=list)  # [[epoch, first_generation], ...]
    snapshots: list[str] = Field(default_factory=list)
    cluster_id: str = ""  # the replica's own stamp, else its disk's ("" when neither)
    first_seen: float = 0.0
    last_seen: float = 0.0


class EventKind(StrEnum):
    ORPHAN_FOUND = "orphan-found"
    ORPHAN_DELETED = "orphan-deleted"
    AGENT_REFUSED = "agent-refused"
    REPLICA_DELETED = "replica-deleted"  # a tombstoned deletion done on a node
    CLUSTER_CREATED = "cluster-created"
    CLUSTER_ID_ASSIGNED = "cluster-id-assigned"  # a store of an older version, migrated
    VOLUME_ADOPTED = "volume-adopted"  # records recreated from orphans (volume adopt)
    # what happened to a volume (issue 20: docs/observability.md)
    VOLUME_CREATED = "volume-created"
    VOLUME_DELETED = "volume-deleted"
    VOLUME_ATTACHED = "volume-attached"  # its engine runs on the wanted node
    VOLUME_DETACHED = "volume-detached"
    REPLICA_FAILED = "replica-failed"  # the engine dropped it (ERR)
    REBUILD_STARTED = "rebuild-started"
    REBUILD_FINISHED = "rebuild-finished"
    SCRUB_FOUND_ROT = "scrub-found-rot"  # a scrub pass found bad or diverged blocks
    SNAPSHOT_CREATED = "snapshot-created"
    BACKUP_DONE = "backup-done"
    BACKUP_FAILED = "backup-failed"
    # keys of encrypted volumes (issue 19: docs/keys.md); never the key itself
    DATA_KEY_ISSUED = "data-key-issued"  # an agent was given the data key for an engine
    VOLUME_REKEYED = "volume-rekeyed"  # the data key rewrapped under another KEK
    VOLUME_SHREDDED = "volume-shredded"  # the wrapped data key destroyed
    DATA_KEY_ROTATION_STARTED = "data-key-rotation-started"  # a new data key, a sweep
    DATA_KEY_ROTATION_FINISHED = "data-key-rotation-finished"  # every block under it
    DATA_KEY_DROPPED = "data-key-dropped"  # an older data key nothing needs was destroyed


class Event(Record):
    id: str  # sortable: <zero-padded ns since the epoch>-<hex>
    at: float
    kind: EventKind
    message: str
    node: str = ""
    volume: str = ""
    replica: str = ""


class keys:
    CLUSTER = "/cluster"
    TENANTS = "/tenants/"
    TOKENS = "/tokens/"
    TOMBSTONES = "/tombstones/"
    ORPHANS = "/orphans/"
    EVENTS = "/events/"
    NODES = "/nodes/"
    DISKS = "/disks/"
    VOLUMES = "/volumes/"
    REPLICAS = "/replicas/"
    SNAPSHOTS = "/snapshots/"
    OPERATIONS = "/operations/"
    BACKUP_TARGETS = "/backup-targets/"
    TARGET_SECRETS = "/backup-target-secrets/"
    BACKUPS = "/backups/"
    GROUP_SNAPSHOTS = "/group-snapshots/"

    @staticmethod
    def node(name: str) -> str:
        return f"/nodes/{name}"

    @staticmethod
    def disk(node: str, name: str) -> str:
        return f"/disks/{node}/{name}"

    @staticmethod
    def volume(name: str) -> str:
        return f"/volumes/{name}"

    @staticmethod
    def replica(volume: str, rid: str) -> str:
        return f"/replicas/{volume}/{rid}"

    @staticmethod
    def snapshot(volume: str, name: str) -> str:
        return f"/snapshots/{volume}/{name}"

    @staticmethod
    def group_snapshot(name: str) -> str:
        return f"/group-snapshots/{name}"

    @staticmethod
    def operation(oid: str) -> str:
        return f"/operations/{oid}"

    @staticmethod
    def tombstone(volume: str, rid: str) -> str:
        return f"/tombstones/{volume}/{rid}"

    @staticmethod
    def orphan(node: str, rid: str) -> str:
        return f"/orphans/{node}/{rid}"

    @staticmethod
    def event(eid: str) -> str:
        return f"/events/{eid}"

    @staticmethod
    def tenant(name: str) -> str:
        return f"/tenants/{name}"

    @staticmethod
    def token(tid: str) -> str:
        return f"/tokens/{tid}"

    @staticmethod
    def backup_target(name: str) -> str:
        return f"/backup-targets/{name}"

    @staticmethod
    def target_secrets(name: str) -> str:
        return f"/backup-target-secrets/{name}"

    @staticmethod
    def backup(bid: str) -> str:
        return f"/backups/{bid}"
