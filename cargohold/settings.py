"""Typed settings, one class per area. Read from arguments and CARGOHOLD_* environment."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cargohold.constants import DEFAULT_REPLICA_PORT


class ReplicaServerSettings(BaseSettings):
    """The replica server of one node (``cargohold replica-server``)."""

    model_config = SettingsConfigDict(env_prefix="CARGOHOLD_REPLICA_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_REPLICA_PORT, ge=0, le=65535)
    unix_socket: str | None = None
    disks: list[str] = Field(default_factory=list, description="directories holding replicas")
    node: str = "local"
    workers: int = Field(1, ge=1, le=64, description="processes serving replicas")
    max_connections: int = Field(4096, ge=1)
    idle_close_seconds: float = Field(0, ge=0, description="0 = never close idle sessions")


class EngineSettings(BaseSettings):
    """One volume's engine (``cargohold engine``)."""

    model_config = SettingsConfigDict(env_prefix="CARGOHOLD_ENGINE_", extra="forbid")

    replica_timeout: float = Field(
        5.0, gt=0, description="seconds a replica may take to answer before it is dropped (ERR)"
    )
    min_replicas: int = Field(
        1, ge=1, description="below this many replicas in the write set, I/O fails (EIO)"
    )
    rebuild_bandwidth: int = Field(
        0, ge=0, description="bytes per second a rebuild may copy (0 = unlimited)"
    )
    rebuild_window: int = Field(
        64 * 1024 * 1024, ge=1 << 20, description="bytes of volume a rebuild step covers"
    )
    local_reads: bool = Field(
        True,
        description="read the local replica's files directly, beside its server "
        "(engine/local_reads.py); off: every read goes through a replica server",
    )
    scrub_interval_hours: float = Field(
        168.0, ge=0, description="hours between scrub passes of every replica (0 = on demand only)"
    )
    scrub_bandwidth: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="bytes per second a scrub reads per replica (0 = unlimited)",
    )
    scrub_window: int = Field(
        4 * 1024 * 1024,
        ge=4096,
        multiple_of=4096,
        description="bytes of volume each replica verifies per scrub request",
    )
