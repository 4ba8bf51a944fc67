"""What a CSI request asks for, checked and turned into cargohold's terms; no I/O.

- StorageClass parameters (``VolumeParameters.parse``): every error names the parameter
  and its allowed values (invariant 6: bad input gets a clear error).
- VolumeSnapshotClass parameters (``SnapshotParameters.parse``): ``type: backup`` with
  ``backupTarget: NAME`` makes a CSI snapshot a backup (docs/kubernetes.md).
- Volume capabilities: the access modes cargohold serves, block or mount, fs types.
- Names: the CO's request name → a manager volume (or snapshot) name, stably.
- Capacity ranges → a size in bytes.

Called by controller.py and node.py; exercised through the driver in tests/e2e/test_csi.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from cargohold import qos_limits
from cargohold.control.jobs import ENABLED, volume_label
from cargohold.csi.errors import Code, CsiError, invalid
from cargohold.errors import InvalidArgument

BLOCK = 4096
GIB = 1 << 30
DEFAULT_SIZE = 1 * GIB
MAX_SIZE = 256 << 40  # the manager's limit
MAX_REPLICAS = 16
DEFAULT_REPLICAS = 3  # the manager's default_replicas, assumed where numberOfReplicas is unset
MAX_STALE_TIMEOUT = 7 * 24 * 3600.0
FS_TYPES = ("ext4", "xfs")
DEFAULT_FS = "ext4"
# mkfs.xfs (xfsprogs >= 5.19) refuses smaller filesystems: "Filesystem must be larger than
# 300MB" (300 MiB makes one, 299 MiB does not)
XFS_MIN_SIZE = 300 * 1024 * 1024
# Parameters Kubernetes' sidecars add or handle themselves; they are not ours to refuse.
K8S_PREFIX = "csi.storage.k8s.io/"
# ... of which external-provisioner's --extra-create-metadata gives the PVC's; CreateVolume
# keeps them as the volume's labels, for its events on the PVC (csi/pvc_events.py)
PVC_NAME_PARAM = K8S_PREFIX + "pvc/name"
PVC_NAMESPACE_PARAM = K8S_PREFIX + "pvc/namespace"
PVC_NAME_LABEL = "pvc.cargohold.io/name"
PVC_NAMESPACE_LABEL = "pvc.cargohold.io/namespace"

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")  # keys/providers.py
_KMS_ID = re.compile(r"^\S{1,2048}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Param:
    name: str
    allowed: str
    default: str


PARAMETERS = (
    Param("numberOfReplicas", f"an integer from 1 to {MAX_REPLICAS}", "the manager's (3)"),
    Param("fsType", " or ".join(FS_TYPES), DEFAULT_FS),
    Param("zoneSpread", "true or false", "true"),
    Param(
        "staleReplicaTimeout",
        "a duration: seconds, or a number with s, m, h or d (at most 7d)",
        "30s",
    ),
    Param("diskSelector", "comma-separated disk tags", "none"),
    Param("nodeSelector", "comma-separated node tags", "none"),
    Param(
        "recurringJobs",
        "comma-separated names of recurring jobs (cargohold job list) that must exist",
        "none",
    ),
    # QoS limits (docs/qos.md): also mutable, in a VolumeAttributesClass
    *(
        Param(lim.csi, lim.allowed + " (e.g. 5000, 10k, 100Mi, unlimited)", "unlimited")
        for lim in qos_limits.LIMITS
    ),
    Param(
        "standbyTarget",
        "the backup target (cargohold backup-target list) another cluster backs the source "
        "volume up into; with standbySourceVolume: each volume is a disaster-recovery standby "
        "(docs/disaster-recovery.md)",
        "none",
    ),
    Param(
        "standbySourceVolume",
        "the source volume's name in the other cluster (with standbyTarget)",
        "none",
    ),
    # encryption at rest (docs/keys.md): the key-encryption key is the manager's (a key
    # file, a Secret mounted into its pod, or a KMS key); the StorageClass names it
    Param("encrypted", "true or false", "false"),
    Param(
        "encryptionKey",
        "with encrypted: the name of a key-encryption key in the manager's key directory "
        "(a key of the Secret mounted there): letters, digits, '.', '_', '-'",
        "default",
    ),
    Param("kmsKeyId", "with encrypted: a KMS key id, ARN or alias (no spaces)", "none"),
)
_KNOWN = {p.name: p for p in PARAMETERS}


def qos_parameters(params: dict[str, str], what: str = "StorageClass parameter") -> dict[str, Any]:
    """The QoS limits among ``params`` (CSI names: maxIops, maxBandwidth, burstSeconds ...)
    as a merge patch of the manager's names (``unlimited``, ``0``: None, remove the limit);
    INVALID_ARGUMENT names a bad one with its allowed values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        lim = qos_limits.BY_CSI.get(key)
        if lim is None:
            continue
        try:
            out[lim.name] = qos_limits.parse_text(lim.name, value)
        except InvalidArgument:
            raise invalid(
                f"{what} {key}={value!r} is not valid: use {_KNOWN[key].allowed}"
            ) from None
    return out


def _bad(name: str, value: str, why: str = "") -> CsiError:
    p = _KNOWN[name]
    extra = f" ({why})" if why else ""
    return invalid(f"StorageClass parameter {name}={value!r} is not valid{extra}: use {p.allowed}")


@dataclass(frozen=True)
class VolumeParameters:
    """The StorageClass parameters of a volume, checked."""

    replicas: int | None = None
    fs_type: str = DEFAULT_FS
    zone_spread: bool = True
    stale_replica_timeout: float | None = None
    disk_tags: tuple[str, ...] = ()
    node_tags: tuple[str, ...] = ()
    recurring_jobs: tuple[str, ...] = ()  # each new volume gets the label that attaches it
    qos: dict[str, Any] = field(default_factory=dict)  # QoS limits set (manager names)
    standby_target: str = ""  # with standby_source: a standby volume (docs/disaster-recovery.md)
    standby_source: str = ""
    pvc: tuple[str, str] | None = None  # (namespace, name) with --extra-create-metadata
    encrypted: bool = False  # with key (a KEK name) or kms_key (docs/keys.md)
    key: str | None = None
    kms_key: str | None = None
    given: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        """The labels of a new volume: one per recurring job (``recurring-job.cargohold.io/
        <job>: enabled``); the manager refuses a job that does not exist (INVALID_ARGUMENT);
        and the PVC's namespace and name when the provisioner gave them."""
        out = {volume_label(j): ENABLED for j in self.recurring_jobs}
        if self.pvc is not None:
            out[PVC_NAMESPACE_LABEL], out[PVC_NAME_LABEL] = self.pvc
        return out

    @classmethod
    def parse(cls, params: dict[str, str]) -> VolumeParameters:
        unknown = sorted(k for k in params if k not in _KNOWN and not k.startswith(K8S_PREFIX))
        if unknown:
            raise invalid(
                f"unknown StorageClass parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}: cargohold knows {', '.join(_KNOWN)}"
            )
        out: dict[str, Any] = {}
        if "numberOfReplicas" in params:
            v = params["numberOfReplicas"]
            try:
                n = int(v.strip())
            except ValueError:
                raise _bad("numberOfReplicas", v) from None
            if not 1 <= n <= MAX_REPLICAS:
                raise _bad("numberOfReplicas", v)
            out["replicas"] = n
        if "fsType" in params:
            v = params["fsType"].strip().lower()
            if v not in FS_TYPES:
                raise _bad("fsType", params["fsType"])
            out["fs_type"] = v
        if "zoneSpread" in params:
            v = params["zoneSpread"].strip().lower()
            if v not in ("true", "false"):
                raise _bad("zoneSpread", params["zoneSpread"])
            out["zone_spread"] = v == "true"
        if "staleReplicaTimeout" in params:
            out["stale_replica_timeout"] = parse_duration(params["staleReplicaTimeout"])
        for key, attr in (("diskSelector", "disk_tags"), ("nodeSelector", "node_tags")):
            if key in params:
                tags = tuple(t.strip() for t in params[key].split(",") if t.strip())
                for t in tags:
                    if not _TAG.match(t):
                        raise _bad(key, params[key], f"tag {t!r}")
                out[attr] = tuple(sorted(set(tags)))
        if "recurringJobs" in params:
            jobs = tuple(j.strip() for j in params["recurringJobs"].split(",") if j.strip())
            for j in jobs:
                if not _LABEL.match(j):
                    raise _bad("recurringJobs", params["recurringJobs"], f"job name {j!r}")
            out["recurring_jobs"] = tuple(sorted(set(jobs)))
        qos = {k: v for k, v in qos_parameters(params).items() if v is not None}
        if qos:
            out["qos"] = qos
        t, src = (
            params.get("standbyTarget", "").strip(),
            params.get("standbySourceVolume", "").strip(),
        )
        if ("standbyTarget" in params) != ("standbySourceVolume" in params):
            name = "standbyTarget" if "standbyTarget" in params else "standbySourceVolume"
            raise _bad(name, params[name], "standbyTarget and standbySourceVolume go together")
        for key, v in (("standbyTarget", t), ("standbySourceVolume", src)):
            if key in params and not _LABEL.match(v):
                raise _bad(key, params[key])
        if t:
            out["standby_target"], out["standby_source"] = t, src
        pvc_ns, pvc_name = params.get(PVC_NAMESPACE_PARAM, ""), params.get(PVC_NAME_PARAM, "")
        if pvc_ns and pvc_name:
            out["pvc"] = (pvc_ns, pvc_name)
        out.update(_encryption(params))
        return cls(**out, given={k: v for k, v in params.items() if k in _KNOWN})


def _encryption(params: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "encrypted" in params:
        v = params["encrypted"].strip().lower()
        if v not in ("true", "false"):
            raise _bad("encrypted", params["encrypted"])
        out["encrypted"] = v == "true"
    if "encryptionKey" in params and "kmsKeyId" in params:
        raise _bad("kmsKeyId", params["kmsKeyId"], "give encryptionKey or kmsKeyId, not both")
    for key, attr, rx in (("encryptionKey", "key", _KEY_NAME), ("kmsKeyId", "kms_key", _KMS_ID)):
        if key in params:
            v = params[key].strip()
            if not out.get("encrypted"):
                raise _bad(key, params[key], 'only with encrypted: "true"')
            if not rx.match(v) or (key == "encryptionKey" and ".." in v):
                raise _bad(key, params[key])
            out[attr] = v
    return out


def parse_duration(value: str) -> float:
    m = _DURATION.match(value)
    if not m:
        raise _bad("staleReplicaTimeout", value)
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX_STALE_TIMEOUT:
        raise _bad("staleReplicaTimeout", value, "out of range")
    return seconds


# --- VolumeSnapshotClass parameters ------------------------------------------------------

SNAPSHOT_TYPES = ("snapshot", "backup")
SNAPSHOT_PARAMETERS = (
    Param("type", " or ".join(SNAPSHOT_TYPES), "snapshot"),
    Param("backupTarget", "the name of a backup target (cargohold backup-target list)", "none"),
)
_SNAP_KNOWN = {p.name: p for p in SNAPSHOT_PARAMETERS}


def _bad_snap(name: str, value: str, why: str = "") -> CsiError:
    p = _SNAP_KNOWN[name]
    extra = f" ({why})" if why else ""
    return invalid(
        f"VolumeSnapshotClass parameter {name}={value!r} is not valid{extra}: use {p.allowed}"
    )


@dataclass(frozen=True)
class SnapshotParameters:
    """The VolumeSnapshotClass parameters of a snapshot, checked: a snapshot in the volume's
    replicas (the default), or a backup to ``backup_target``."""

    backup_target: str = ""  # "" = an ordinary snapshot

    @property
    def is_backup(self) -> bool:
        return bool(self.backup_target)

    @classmethod
    def parse(cls, params: dict[str, str]) -> SnapshotParameters:
        unknown = sorted(k for k in params if k not in _SNAP_KNOWN and not k.startswith(K8S_PREFIX))
        if unknown:
            raise invalid(
                f"unknown VolumeSnapshotClass parameter{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}: cargohold knows {', '.join(_SNAP_KNOWN)}"
            )
        kind = params.get("type", "snapshot").strip().lower()
        if kind not in SNAPSHOT_TYPES:
            raise _bad_snap("type", params["type"])
        target = params.get("backupTarget", "").strip()
        if kind == "backup":
            if not target:
                raise invalid(
                    "VolumeSnapshotClass parameter backupTarget is required with type=backup: "
                    f"use {_SNAP_KNOWN['backupTarget'].allowed}"
                )
            if not _LABEL.match(target):
                raise _bad_snap("backupTarget", params["backupTarget"])
            return cls(backup_target=target)
        if "backupTarget" in params:
            raise _bad_snap("backupTarget", params["backupTarget"], "only with type=backup")
        return cls()


# --- names -------------------------------------------------------------------------------


def volume_name(request_name: str) -> str:
    """The manager volume name for a CO's request name: the name itself when it is a valid
    name (``pvc-<uuid>`` is), else a lowercase, cleaned prefix plus 8 hex of its SHA-256 —
    the same request name always gives the same volume."""
    return _derive(request_name, "volume")


def snapshot_name(request_name: str) -> str:
    return _derive(request_name, "snapshot")


def _derive(name: str, what: str) -> str:
    if not name:
        raise invalid(f"the {what} name is required")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name if c not in "\t\n\r"):
        raise invalid(f"the {what} name {name!r} contains control characters")
    if _LABEL.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    clean = re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")[:54].strip("-.")
    return f"{clean}-{digest}" if clean else f"{what[:3]}-{digest}"


def snapshot_id(volume: str, snapshot: str) -> str:
    return f"{volume}/{snapshot}"


def split_snapshot_id(sid: str) -> tuple[str, str] | None:
    """``(volume, snapshot)`` of a snapshot id, or None when it is not one of ours."""
    volume, sep, snap = sid.partition("/")
    if not sep or not _LABEL.match(volume) or not _LABEL.match(snap):
        return None
    return volume, snap


BACKUP_PREFIX = "backup:"


def backup_snapshot_id(target: str, backup: str) -> str:
    """The CSI snapshot id of a backup: ``backup:<target>:<backup id>`` (a ':' is in no
    volume name, so it never reads as ``VOLUME/SNAPSHOT``)."""
    return f"{BACKUP_PREFIX}{target}:{backup}"


def split_backup_snapshot_id(sid: str) -> tuple[str, str] | None:
    """``(target, backup id)`` of a backup's snapshot id, or None when it is not one."""
    if not sid.startswith(BACKUP_PREFIX):
        return None
    target, sep, bid = sid[len(BACKUP_PREFIX) :].partition(":")
    if not sep or not _LABEL.match(target) or not _BACKUP_ID.match(bid):
        return None
    return target, bid


_BACKUP_ID = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,126}[a-z0-9])?$")  # model.BACKUP_ID_PATTERN


def valid_name(name: str) -> bool:
    return bool(_LABEL.match(name))


# --- capacity ----------------------------------------------------------------------------


def round_up(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def fs_minimum(fs_type: str, limit: int) -> int:
    """The smallest volume a filesystem of ``fs_type`` can be made on: CreateVolume rounds
    a smaller request up to it (CSI lets a volume be larger than required_bytes), so a
    64 MiB xfs PVC gets a 300 MiB volume rather than a volume no node can ever stage.
    OUT_OF_RANGE when limit_bytes forbids that."""
    if fs_type != "xfs":
        return 0
    if limit and limit < XFS_MIN_SIZE:
        raise CsiError(
            Code.OUT_OF_RANGE,
            f"an xfs volume must be at least 300 MiB ({XFS_MIN_SIZE} bytes; mkfs.xfs makes "
            f"no smaller filesystem), but limit_bytes is {limit}: use ext4 or a larger limit",
        )
    return XFS_MIN_SIZE


def size_for(required: int, limit: int, minimum: int = 0) -> int:
    """The size to provision for a capacity range (0 = unset), at least ``minimum``
    (a clone's source). OUT_OF_RANGE when nothing fits."""
    if required < 0 or limit < 0:
        raise invalid(f"capacity must not be negative (required {required}, limit {limit})")
    if limit and required > limit:
        raise CsiError(
            Code.OUT_OF_RANGE, f"required_bytes {required} is larger than limit_bytes {limit}"
        )
    size = round_up(required) if required else max(DEFAULT_SIZE, minimum)
    if limit and size > limit:
        size = limit // BLOCK * BLOCK  # the largest multiple of 4096 under the limit
        if size < max(required, 1):
            raise CsiError(
                Code.OUT_OF_RANGE,
                f"no size in [{required}, {limit}] is a multiple of {BLOCK} bytes",
            )
    size = max(size, minimum)
    if limit and size > limit:
        raise CsiError(
            Code.OUT_OF_RANGE,
            f"the source is {minimum} bytes, larger than limit_bytes {limit}",
        )
    if size > MAX_SIZE:
        raise CsiError(Code.OUT_OF_RANGE, f"{size} bytes is more than the maximum, 256 TiB")
    return size


def fits(size: int, required: int, limit: int) -> bool:
    return (not required or size >= required) and (not limit or size <= limit)


# --- capabilities ------------------------------------------------------------------------

# access mode numbers of csi.proto (VolumeCapability.AccessMode.Mode)
SINGLE_NODE_WRITER = 1
SINGLE_NODE_READER_ONLY = 2
MULTI_NODE_READER_ONLY = 3
MULTI_NODE_SINGLE_WRITER = 4
MULTI_NODE_MULTI_WRITER = 5
SINGLE_NODE_SINGLE_WRITER = 6
SINGLE_NODE_MULTI_WRITER = 7

SUPPORTED_MODES = {
    SINGLE_NODE_WRITER: "SINGLE_NODE_WRITER",
    SINGLE_NODE_READER_ONLY: "SINGLE_NODE_READER_ONLY",
    SINGLE_NODE_SINGLE_WRITER: "SINGLE_NODE_SINGLE_WRITER",
    SINGLE_NODE_MULTI_WRITER: "SINGLE_NODE_MULTI_WRITER",
    MULTI_NODE_READER_ONLY: "MULTI_NODE_READER_ONLY",
}
_REFUSED = {
    MULTI_NODE_SINGLE_WRITER: "MULTI_NODE_SINGLE_WRITER",
    MULTI_NODE_MULTI_WRITER: "MULTI_NODE_MULTI_WRITER",
}


def capability_problem(cap: Any) -> str:
    """Why cargohold cannot serve a ``VolumeCapability``, or "" when it can."""
    mode = cap.access_mode.mode if cap.HasField("access_mode") else 0
    kind = cap.WhichOneof("access_type")
    if kind is None:
        return "a volume capability must say block or mount"
    if mode in _REFUSED:
        return (
            f"access mode {_REFUSED[mode]} is not supported: a cargohold volume has one "
            "writer (one engine, fenced by epoch), so it can be written from one node only; "
            "use SINGLE_NODE_WRITER, SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER or "
            "MULTI_NODE_READER_ONLY"
        )
    if mode not in SUPPORTED_MODES:
        return f"access mode {mode} is unknown or unset"
    if kind == "mount":
        fs = cap.mount.fs_type.strip().lower()
        if fs and fs not in FS_TYPES:
            return f"fs_type {cap.mount.fs_type!r} is not supported: use {' or '.join(FS_TYPES)}"
    return ""


def check_capabilities(caps: Any, required: bool = True) -> None:
    """INVALID_ARGUMENT unless every capability is given and servable (CreateVolume's
    and ControllerPublish's checks)."""
    if required and not caps:
        raise invalid("volume_capabilities are required")
    for cap in caps:
        why = capability_problem(cap)
        if why:
            raise invalid(why)


def is_multi_reader(cap: Any) -> bool:
    return cap.access_mode.mode == MULTI_NODE_READER_ONLY


def is_reader_only(cap: Any) -> bool:
    """A reader-only access mode: the node attaches and mounts the volume read-only."""
    return cap.access_mode.mode in (SINGLE_NODE_READER_ONLY, MULTI_NODE_READER_ONLY)
