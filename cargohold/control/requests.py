"""The bodies of the manager API's write requests (pydantic, strict: unknown fields and
wrong types are refused with 422). ``Service`` takes them; api_*.py declare them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, field_validator

from cargohold.control.model import VolumeSource, check_name, name_field


class VolumeCreate(BaseModel):
    model_config = {"extra": "forbid"}

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
