"""The manager's tunables (``cargohold manager``; env ``CARGOHOLD_MANAGER_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ManagerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARGOHOLD_MANAGER_", extra="forbid")

    heartbeat_interval: float = Field(
        2.0,
        gt=0,
        description="seconds between the heartbeats of an agent with nothing new to report, "
        "and the longest a heartbeat is held (changes reach agents at once, by long poll)",
    )
    node_down_after: float = Field(
        5.0, gt=0, description="seconds without a heartbeat before a node is marked down"
    )
    reconcile_interval: float = Field(
        1.0, gt=0, description="seconds between reconciler passes (API writes wake them early)"
    )
    overprovisioning: float = Field(
        2.0, ge=1.0, description="a disk may hold replicas of up to capacity x this ratio"
    )
    leader_ttl: float = Field(
        3.0, gt=0, description="seconds a dead leader keeps its lease before a standby takes over"
    )
    operation_retention: float = Field(
        3600.0, ge=0, description="seconds finished operations stay listed"
    )
    etcd_tls_dir: str | None = Field(
        None,
        description="credentials directory (tls.crt, tls.key, ca.crt, ca.crl) of the "
        "manager's etcd client certificate, issued by etcd's CA (docs/security.md); "
        "needed for https:// etcd endpoints",
    )
    default_replicas: int = Field(3, ge=1, le=16, description="replicas of a new volume")
    max_request_bytes: int = Field(
        16 << 20,
        ge=64 << 10,
        description="the largest request body the API takes (413 above it); a heartbeat of a "
        "node with 10,000 replicas is about 2 MiB",
    )
    tombstone_ttl: float = Field(
        7 * 86400.0,
        gt=0,
        description="seconds a deleted replica's tombstone is kept: a node away longer than "
        "this finds its copy an orphan (kept) instead of deleting it",
    )
    orphan_grace: float = Field(
        14 * 86400.0,
        ge=0,
        description="seconds an orphan replica (on a disk, in no record) is kept before it "
        "is deleted, only when its cluster id is this cluster's (0 = never)",
    )

    @property
    def heartbeat_every(self) -> float:
        """The heartbeat interval in force: ``heartbeat_interval``, but never more than
        ``node_down_after`` / 2.5, so that a node is not marked down between two heartbeats
        (a cluster run with a short ``node_down_after`` heartbeats faster)."""
        return min(self.heartbeat_interval, self.node_down_after / 2.5)
