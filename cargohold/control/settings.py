"""The manager's tunables (``cargohold manager``; env ``CARGOHOLD_MANAGER_*``), in the one
settings style of cargohold (``cargohold/settings.py``). ``cli/manager_cmd.py`` builds one
``ManagerSettings`` per run and hands it to the manager, its API and its reconcilers."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cargohold.settings import Settings, setting


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class ManagerSettings(Settings):
    """The control plane's manager (``cargohold manager``)."""

    env_prefix: ClassVar[str] = "CARGOHOLD_MANAGER_"
    component: ClassVar[str] = "manager"

    heartbeat_interval: float = setting(
        2.0,
        "seconds between the heartbeats of an agent with nothing new to report, and the "
        "longest a heartbeat is held (changes reach agents at once, by long poll)",
        gt=0,
    )
    node_down_after: float = setting(
        5.0, "seconds without a heartbeat before a node is marked down", gt=0
    )
    reconcile_interval: float = setting(
        1.0, "seconds between reconciler passes (API writes wake them early)", gt=0
    )
    overprovisioning: float = setting(
        2.0, "a disk may hold replicas of up to capacity x this ratio", ge=1.0
    )
    leader_ttl: float = setting(
        3.0, "seconds a dead leader keeps its lease before a standby takes over", gt=0
    )
    operation_retention: float = setting(3600.0, "seconds finished operations stay listed", ge=0)
    etcd_tls_dir: str | None = setting(
        None,
        "credentials directory (tls.crt, tls.key, ca.crt, ca.crl) of the manager's etcd "
        "client certificate, issued by etcd's CA (docs/security.md); needed for https:// "
        "etcd endpoints",
    )
    default_replicas: int = setting(3, "replicas of a new volume", ge=1, le=16)
    standby_poll_interval: float = setting(
        15.0,
        "seconds between two reads of a standby volume's target catalog (one GET each; "
        "docs/disaster-recovery.md): the most a new backup waits before its apply starts",
        ge=0.5,
        le=3600,
    )
    standby_pin_ttl: float = setting(
        3600.0,
        "seconds a standby's pin on the backups it holds and applies lasts unless renewed: "
        "the source's retention may delete them once a standby gone for this long stopped "
        "renewing it",
        ge=60,
    )
    max_request_bytes: int = setting(
        16 << 20,
        "the largest request body the API takes (413 above it); a heartbeat of a node with "
        "10,000 replicas is about 2 MiB",
        ge=64 << 10,
    )
    tombstone_ttl: float = setting(
        7 * 86400.0,
        "seconds a deleted replica's tombstone is kept: a node away longer than this finds "
        "its copy an orphan (kept) instead of deleting it",
        gt=0,
    )
    orphan_grace: float = setting(
        14 * 86400.0,
        "seconds an orphan replica (on a disk, in no record) is kept before it is deleted, "
        "only when its cluster id is this cluster's (0 = never)",
        ge=0,
    )

    ca_dir: str | None = setting(
        None,
        "the cluster's CA directory (--ca-dir; made with --init when missing): signs the "
        "certificates of joining agents, their renewals and engines'",
    )
    certificate_lifetime: float = setting(
        86400.0,
        "seconds a certificate the manager signs (agents, replica servers, engines) is valid; "
        "agents renew theirs at half-life",
        gt=0,
    )
    disk_roots: list[str] = setting(  # noqa: RUF009
        default_factory=lambda: ["/var/lib/cargohold"],
        description="directories under which a disk added through the API may lie (after "
        "symlinks and '..' are resolved; never a system directory such as /etc or /proc)",
    )
    key_dir: str | None = setting(
        None,
        "directory of key-encryption keys (provider `file`): a file per key, 32 raw bytes or "
        "64 hex digits; in Kubernetes a Secret mounted there (docs/keys.md)",
    )
    kms_endpoint: str | None = setting(
        None,
        "URL of a KMS API (provider `kms`; default: AWS KMS of kms_region); credentials "
        "from boto3's usual chain (docs/keys.md)",
    )
    kms_region: str | None = setting(
        None, "region of the KMS (provider `kms`); set this or kms_endpoint to enable it"
    )

    @property
    def heartbeat_every(self) -> float:
        """The heartbeat interval in force: ``heartbeat_interval``, but never more than
        ``node_down_after`` / 2.5, so that a node is not marked down between two heartbeats
        (a cluster run with a short ``node_down_after`` heartbeats faster)."""
        return min(self.heartbeat_interval, self.node_down_after / 2.5)


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class ClientSettings(Settings):
    """Where a client finds the manager: the CLI's commands, the CSI driver and the launcher
    of local clusters (``control/client.py``). The CLI's ``--api`` and ``--dir`` win."""

    env_prefix: ClassVar[str] = "CARGOHOLD_"
    component: ClassVar[str] = "CLI, CSI driver, launcher"

    api: str | None = setting(
        None, "the manager's URL, http://HOST:PORT or unix:/PATH (--api; wins over a directory)"
    )
    dir: str = setting(
        "~/.cargohold", "the local cluster's directory, holding cluster.json (--dir)"
    )
    token_file: str | None = setting(
        None,
        "a FILE holding a bearer token for the manager's API; default: the cluster "
        "directory's token",
    )
