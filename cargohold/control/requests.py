"""The bodies of the manager API's write requests (pydantic, strict: unknown fields and
wrong types are refused with 422). ``Service`` takes them; api_*.py declare them.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from cargohold.control.disk_roots import system_dir
from cargohold.control.model import QosLimits, VolumeSource, check_name, name_field

# a key-encryption key's name (keys/providers.py KEY_NAME_RE; '..' refused there too)
KEY_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$"


# a KMS key id, ARN or alias: no whitespace, every whitespace character spelled out (no \s):
# Python's re, pydantic's Rust regex and the ECMA-262 regexes a schema's clients use each
# read \s differently (\x1c-\x1f, \x85), and the schema must mean one thing to all of them
KMS_KEY_PATTERN = (
    r"^[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
)


class VolumeCreate(BaseModel):
    model_config = {
        "extra": "forbid",
        # the schema says what _one_key checks: not both a key file and a KMS key
        "json_schema_extra": {
            "not": {
                "required": ["key", "kms_key"],
                "properties": {"key": {"type": "string"}, "kms_key": {"type": "string"}},
            }
        },
    }

    name: str = name_field()
    size_bytes: StrictInt = Field(gt=0, le=256 << 40, multiple_of=4096)
    replicas: StrictInt | None = Field(default=None, ge=1, le=16)
    zone_spread: StrictBool = True
    node_tags: list[str] = Field(default_factory=list)
    disk_tags: list[str] = Field(default_factory=list)
    reclaim_policy: Literal["Delete", "Retain"] = "Delete"
    stale_replica_timeout: StrictFloat = Field(default=30.0, ge=0, le=7 * 86400)
    source: VolumeSource | None = None
    preferred_nodes: list[str] = Field(
        default_factory=list, description="put the first replica on the first of these that fits"
    )
    tenant: str | None = name_field(
        default=None,
        description="whose volume (default: the caller's tenant; only a caller without a "
        "tenant, the admin, may name one)",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="recurring jobs select volumes by label; recurring-job.cargohold.io/JOB: "
        "enabled attaches job JOB (which must exist; docs/jobs.md)",
    )
    qos: QosLimits | None = Field(default=None, description="QoS limits (docs/qos.md)")
    # encryption at rest (docs/keys.md): the size is rounded up to whole 256 KiB groups
    encrypted: StrictBool = Field(
        default=False,
        description="encrypt at rest with a new data key (a clone or restore of an "
        "encrypted volume is encrypted with its source's key whatever this says)",
    )
    key: str | None = Field(
        default=None,
        pattern=KEY_NAME_PATTERN,
        max_length=253,
        description="the key-encryption key's name in the manager's key directory "
        "(provider file; default: 'default' when kms_key is not given either)",
    )
    kms_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=KMS_KEY_PATTERN,
        description="a KMS key id, ARN or alias to wrap the data key with (provider kms)",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "volume name") if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_key(self) -> VolumeCreate:
        if self.key is not None and self.kms_key is not None:
            raise ValueError("give key (a key file) or kms_key (a KMS key), not both")
        return self


class KeyChoice(BaseModel):
    """POST /api/v1/volumes/{volume}/rekey: the key-encryption key to rewrap the data keys
    with (at most one of ``key`` and ``kms_key``), and/or ``data_key: true``: rotate the
    data key itself (a new one; the engine rewrites every block under it in the
    background). At least one of the three."""

    # the schema says what _one_key checks: exactly one of key and kms_key is a string,
    # or neither and data_key is true
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "oneOf": [
                {"required": ["key"], "properties": {"key": {"type": "string"}}},
                {"required": ["kms_key"], "properties": {"kms_key": {"type": "string"}}},
                {
                    "required": ["data_key"],
                    "properties": {"data_key": {"const": True}},
                    "not": {"anyOf": [{"required": ["key"]}, {"required": ["kms_key"]}]},
                },
            ]
        },
    }

    key: str | None = Field(default=None, pattern=KEY_NAME_PATTERN, max_length=253)
    kms_key: str | None = Field(
        default=None, min_length=1, max_length=2048, pattern=KMS_KEY_PATTERN
    )
    data_key: StrictBool = Field(
        default=False,
        description="rotate the data key: a new one, every block rewritten under it online",
    )

    @model_validator(mode="after")
    def _one_key(self) -> KeyChoice:
        if self.key is not None and self.kms_key is not None:
            raise ValueError("give at most one of key (a key file) and kms_key (a KMS key)")
        if self.key is None and self.kms_key is None and not self.data_key:
            raise ValueError(
                "give key (a key file) or kms_key (a KMS key) to rewrap, and/or data_key: "
                "true to rotate the data key"
            )
        return self


class DataKeyRequest(BaseModel):
    """POST /api/v1/volumes/{volume}/data-key: an agent asks for the data key of a volume
    whose engine it is to start on its node."""

    model_config = {"extra": "forbid"}

    node: str = name_field(description="the asking agent's node (the engine's, per the volume)")
    epoch: StrictInt = Field(ge=1, description="the epoch of the engine it starts")


class VolumeUpdate(BaseModel):
    """PATCH /api/v1/volumes/{volume}: what may change on a volume in use (a merge patch:
    fields left out stay as they are; a QoS limit set to null is removed)."""

    model_config = {"extra": "forbid"}

    qos: QosLimits | None = Field(
        default=None,
        description="QoS limits to change; applied to a running engine within a second",
    )


class StandbyCreate(BaseModel):
    """A standby volume (docs/disaster-recovery.md): restores the newest backup of
    ``source_volume`` in ``target`` and follows its newer backups until activated."""

    model_config = {"extra": "forbid"}

    name: str = name_field()
    target: str = name_field(description="the backup target the source cluster backs up into")
    source_volume: str = name_field(description="the source volume's name (in its cluster)")
    source_volume_id: str = Field(
        default="",
        max_length=128,
        description="the source volume's uid (default: the one of its newest backup)",
    )
    size_bytes: StrictInt | None = Field(
        default=None, gt=0, le=256 << 40, multiple_of=4096, description="default: the backup's"
    )
    replicas: StrictInt | None = Field(default=None, ge=1, le=16)
    node_tags: list[str] = Field(default_factory=list)
    disk_tags: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "volume name") if isinstance(v, str) else v


class DiskCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = name_field()
    path: str = Field(min_length=1)
    capacity_bytes: StrictInt = Field(gt=0)
    tags: list[str] = Field(default_factory=list)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "disk name") if isinstance(v, str) else v


class AttachRequest(BaseModel):
    model_config = {"extra": "forbid"}

    node: str = name_field()
    force: StrictBool = False  # take over from an engine on a node that is still up
    read_only: StrictBool = False  # NBD clients may only read (a standby: only so)


class ExpandRequest(BaseModel):
    model_config = {"extra": "forbid"}

    size_bytes: StrictInt = Field(gt=0, le=256 << 40, multiple_of=4096)


class SnapshotCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = name_field()
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "snapshot name") if isinstance(v, str) else v


class GroupSnapshotCreate(BaseModel):
    """A group snapshot: a snapshot ``name`` of each of ``volumes``, at one crash-consistent
    point (control/group_snapshots.py)."""

    model_config = {"extra": "forbid"}

    name: str = name_field()
    volumes: list[Annotated[str, name_field()]] = Field(
        min_length=1, max_length=64, json_schema_extra={"uniqueItems": True}
    )
    hold_seconds: float = Field(
        default=30.0, gt=0, le=120, description="the longest each volume's writes stay held"
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "group snapshot name") if isinstance(v, str) else v

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        for name in v:
            check_name(name, "volume name")
        if len(set(v)) != len(v):
            raise ValueError("a volume may appear only once in a group")
        return v


class SnapshotMetadataRequest(BaseModel):
    """A page of a snapshot's changed-block metadata (engine/snapshot_metadata.py)."""

    model_config = {"extra": "forbid"}

    base: Annotated[str, name_field()] | None = Field(
        default=None, description="another snapshot of the volume: the blocks changed since it"
    )
    offset: StrictInt = Field(default=0, ge=0, description="the byte offset the page starts at")
    max_results: StrictInt = Field(default=0, ge=0, le=4096, description="runs at most (0: 4096)")

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, v: object) -> object:
        return check_name(v, "base snapshot name") if isinstance(v, str) else v


class TenantCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = name_field()
    quota_bytes: StrictInt | None = Field(
        default=None,
        ge=0,
        description="provisioned bytes its volumes may add up to (null: no quota)",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "tenant name") if isinstance(v, str) else v


class TenantQuota(BaseModel):
    model_config = {"extra": "forbid"}

    quota_bytes: StrictInt | None = Field(ge=0, description="null: no quota")


TARGET_URL = r"^(s3://[^/@]+(/.*)?|file:///.*)$"
"""What a backup target's url looks like in the schema (the validator says why when not)."""
REPOSITORY_KEY_B64 = r"^[A-Za-z0-9+/]{43}=$"
"""Base64 of 32 bytes."""


class BackupTargetCreate(BaseModel):
    """POST /api/v1/backup-targets: a target and its secrets (docs/backups.md). The
    secrets are kept by the manager and never shown again."""

    model_config = {"extra": "forbid"}

    name: str = name_field()
    url: str = Field(
        min_length=1,
        max_length=1024,
        pattern=TARGET_URL,
        description="s3://BUCKET/PREFIX or file:///PATH (an existing directory, not a system "
        "one: /etc, /proc, /usr ...)",
    )
    endpoint: str = Field(default="", max_length=1024, description="S3: the endpoint URL")
    region: str = Field(default="", max_length=64)
    ca_bundle: str = Field(
        default="", max_length=1 << 20, description="PEM: the CAs that sign the endpoint"
    )
    access_key: SecretStr = Field(default=SecretStr(""), description="S3: never shown again")
    secret_key: SecretStr = Field(default=SecretStr(""), description="S3: never shown again")
    repository_key: SecretStr = Field(
        json_schema_extra={"pattern": REPOSITORY_KEY_B64, "minLength": 44, "maxLength": 44},
        description="base64 of the repository's 32-byte key: it opens the repository if one "
        "is there, else a new repository is made with it. Keep a copy: without it the "
        "backups cannot be read by anyone",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        return check_name(v, "backup target name") if isinstance(v, str) else v

    @field_validator("url", mode="before")  # before the schema's pattern: its own words
    @classmethod
    def _url(cls, v: object) -> object:
        if not isinstance(v, str):
            return v
        if not (v.startswith("s3://") or v.startswith("file:///")):
            raise ValueError("a target's url is s3://BUCKET/PREFIX or file:///PATH")
        if "@" in v.split("/", 3)[2]:
            raise ValueError("credentials go in access_key and secret_key, not in the url")
        if v.startswith("file:///"):
            system = system_dir(os.path.normpath(v[len("file://") :]))
            if system is not None:
                raise ValueError(f"a file target may not be in {system}: {v}")
        return v

    @field_validator("repository_key")
    @classmethod
    def _key(cls, v: SecretStr) -> SecretStr:
        try:
            raw = base64.b64decode(v.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("repository_key is not base64") from None
        if len(raw) != 32:
            raise ValueError(f"repository_key must be 32 bytes (base64), got {len(raw)}")
        return v


class BackupCreate(BaseModel):
    """POST /api/v1/volumes/{volume}/backups."""

    model_config = {"extra": "forbid"}

    target: str = name_field()
    snapshot: str | None = name_field(
        default=None,
        description="a ready snapshot of the volume to back up (default: one taken now)",
    )
    labels: dict[str, str] = Field(default_factory=dict)
