"""What the manager's API does: validate a request against the records, write the wish.

The HTTP layer (``api.py`` and its ``api_*.py``) only maps JSON to these calls and errors to
status codes; the reconcilers carry wishes out. Long work (snapshots, expand, clone) becomes
an ``Operation`` that an engine runs; the caller polls it.

``Service`` is put together from its parts, one per kind of record: service_nodes.py,
service_volumes.py, service_snapshots.py, service_cluster.py, service_backups.py, heartbeat_hold.py (the
heartbeat's long poll); what they share is service_base.py. The request bodies are in
requests.py (named here too, for callers that take them from this module).
"""

from __future__ import annotations

from cargohold.control.enrollment import EnrollmentCalls
from cargohold.control.heartbeat_hold import HeartbeatCalls
from cargohold.control.requests import (
    AttachRequest,
    BackupCreate,
    BackupTargetCreate,
    DiskCreate,
    ExpandRequest,
    SnapshotCreate,
    StandbyCreate,
    VolumeCreate,
)
from cargohold.control.service_backups import BackupCalls
from cargohold.control.service_cluster import HEALTH_TIMEOUT, ClusterCalls
from cargohold.control.service_groups import GroupCalls
from cargohold.control.service_jobs import JobCalls
from cargohold.control.service_nodes import NodeCalls
from cargohold.control.service_snapshots import SnapshotCalls
from cargohold.control.service_standby import StandbyCalls
from cargohold.control.service_tenants import TenantCalls
from cargohold.control.service_volumes import VolumeCalls

__all__ = [
    "HEALTH_TIMEOUT",
    "AttachRequest",
    "BackupCreate",
    "BackupTargetCreate",
    "DiskCreate",
    "ExpandRequest",
    "Service",
    "SnapshotCreate",
    "StandbyCreate",
    "VolumeCreate",
]


class Service(
    StandbyCalls,  # first: it builds on VolumeCalls and BackupCalls
    NodeCalls,
    HeartbeatCalls,
    VolumeCalls,
    SnapshotCalls,
    ClusterCalls,
    TenantCalls,
    EnrollmentCalls,
    JobCalls,
    BackupCalls,
    GroupCalls,
):
    """What the manager's API does (see the module's docstring); one instance per manager."""
