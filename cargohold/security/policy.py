"""Who may do what (pure): the REST API's permissions per role, tenant scoping, and the
replica wire's rules. docs/security.md prints these tables; a test keeps them equal.

Every REST route declares one permission (``api.py``); a route without one fails the
route-coverage test. Roles hold permissions; a tenant-scoped identity (``tenant`` set:
a Kubernetes cluster's CSI driver, a tenant's own users) sees and changes only its own
tenant's objects, and the admin without a tenant sees all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from cargohold.errors import PermissionDenied, Unauthenticated
from cargohold.security.grants import ReadGrant
from cargohold.security.identity import Identity, Role


class Permission(enum.StrEnum):
    STATUS_READ = "status:read"  # cluster status, health
    VOLUMES_READ = "volumes:read"  # volumes, their replicas, snapshots, attachments, operations
    VOLUMES_WRITE = "volumes:write"  # create, delete, expand, snapshot, revert, scrub
    VOLUMES_ATTACH = "volumes:attach"  # attach, detach
    NODES_READ = "nodes:read"  # nodes, disks, replicas, events, orphans
    NODES_WRITE = "nodes:write"  # cordon, uncordon, drain, node address, disks
    RECOVERY = "recovery"  # orphans adopt/delete, recover-epoch: last-resort repairs
    HEARTBEAT = "heartbeat"  # an agent reports its node and takes its work
    TENANTS = "tenants"  # tenants, their quotas and credentials
    SECURITY = "security"  # tokens, certificates, join tokens, revocation
    JOBS_READ = "jobs:read"  # recurring snapshot and backup jobs, their runs
    JOBS_WRITE = "jobs:write"  # create, delete, run-now recurring jobs
    TARGETS_READ = "targets:read"  # backup targets (never their secrets)
    TARGETS_WRITE = "targets:write"  # add, delete, sync and garbage-collect backup targets
    BACKUPS_READ = "backups:read"  # backups (a tenant: of its own volumes)
    BACKUPS_WRITE = "backups:write"  # back up a volume, delete a backup
    METRICS_READ = "metrics:read"  # /metrics of the manager and of each node's agent


_ALL = frozenset(Permission)
_READ = frozenset(
    {
        Permission.STATUS_READ,
        Permission.VOLUMES_READ,
        Permission.NODES_READ,
        Permission.JOBS_READ,
        Permission.TARGETS_READ,
        Permission.BACKUPS_READ,
        Permission.METRICS_READ,  # metrics name every volume: never a tenant's (not scoped)
    }
)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: _ALL - {Permission.HEARTBEAT},
    Role.OPERATOR: _READ
    | {
        Permission.VOLUMES_WRITE,
        Permission.VOLUMES_ATTACH,
        Permission.NODES_WRITE,
        Permission.RECOVERY,
        Permission.JOBS_WRITE,
        Permission.BACKUPS_WRITE,
    },
    Role.READER: _READ,
    Role.CSI: frozenset(
        {
            Permission.STATUS_READ,
            Permission.VOLUMES_READ,
            Permission.VOLUMES_WRITE,
            Permission.VOLUMES_ATTACH,
            Permission.NODES_READ,
            Permission.BACKUPS_READ,
            Permission.BACKUPS_WRITE,
        }
    ),
    Role.AGENT: frozenset({Permission.HEARTBEAT, Permission.STATUS_READ}),
    Role.MANAGER: frozenset(),
    Role.REPLICA: frozenset(),
    Role.ENGINE: frozenset(),
    Role.ETCD: frozenset(),
}

TENANT_SCOPED = frozenset(
    {
        Permission.STATUS_READ,
        Permission.VOLUMES_READ,
        Permission.VOLUMES_WRITE,
        Permission.VOLUMES_ATTACH,
        Permission.JOBS_READ,
        Permission.JOBS_WRITE,
        Permission.BACKUPS_READ,
        Permission.BACKUPS_WRITE,
    }
)
"""What a tenant-scoped identity may do at all: its own volumes, their backups and its
recurring jobs. Nodes, disks, recovery, backup targets, tenants and security are the storage
cluster's, not a tenant's (NODES_READ is dropped for tenants' people: node names and
addresses are the provider's; a tenant's CSI driver keeps it, it needs nodes and zones for topology and attachment)."""


def allowed(ident: Identity, perm: Permission) -> bool:
    if perm not in ROLE_PERMISSIONS.get(ident.role, frozenset()):
        return False
    if ident.tenant is None or perm in TENANT_SCOPED:
        return True
    # a tenant's CSI driver places and attaches volumes by node and zone (topology,
    # ControllerPublish, GetCapacity): it reads nodes; a tenant's people do not
    return ident.role is Role.CSI and perm is Permission.NODES_READ


def sees(ident: Identity, tenant: str | None) -> bool:
    """May ``ident`` see an object of ``tenant`` (None: the cluster's own objects)?"""
    return ident.tenant is None or ident.tenant == tenant


# --- the replica wire ----------------------------------------------------------------------

REPLICA_ADMIN_OPS = frozenset({"CREATE", "DELETE", "LIST"})
"""Ops on replicas as objects: only the node's agent (and the manager's tools)."""


def replica_op_allowed(ident: Identity, op: str, replica_volume: str | None) -> bool:
    """May the peer ``ident`` run ``op`` (a replica-wire op name) on a replica of
    ``replica_volume`` (None: no replica named yet, e.g. HELLO or LIST)?

    - agents and managers: every op (they create, delete, list, probe and repair);
    - the engine of volume V: HELLO, LIST (filtered to V's replicas) and OPEN of V's
      replicas, then every data op on the connection it opened (another volume's replica
      only with a read grant: ``grant_allows``);
    - a replica server (rebuilds between replica servers): HELLO and reads of any replica;
    - nobody else."""
    if ident.role in (Role.AGENT, Role.MANAGER):
        return True
    if op in ("HELLO",):
        return ident.role in (Role.ENGINE, Role.REPLICA)
    if ident.role is Role.ENGINE:
        if op in ("CREATE", "DELETE"):
            return False
        if op == "LIST":
            return True
        return replica_volume is not None and replica_volume == ident.name
    return False


def lists_replica(
    ident: Identity, replica_volume: str | None, grant: ReadGrant | None = None
) -> bool:
    """Whether LIST shows a replica of ``replica_volume`` to ``ident`` (an engine with a
    read grant sees the granted volume's replicas too)."""
    if ident.role in (Role.AGENT, Role.MANAGER):
        return True
    if ident.role is not Role.ENGINE:
        return False
    if replica_volume == ident.name:
        return True
    return grant is not None and grant_holder(ident, grant) and grant.volume == replica_volume


GRANT_OPS = frozenset(
    {"HELLO", "LIST", "OPEN", "CLOSE", "INFO", "SNAPSHOT_LIST", "EXTENTS", "EXPORT", "READ"}
)
"""What a session opened with a read grant may do: look, and read the granted snapshot."""

GRANT_SNAPSHOT_OPS = frozenset({"EXTENTS", "EXPORT", "READ"})
"""Of those, the ops that read data: only of the granted snapshot, never the live head."""


def grant_holder(ident: Identity, grant: ReadGrant) -> bool:
    """``grant`` names ``ident``: the engine of the volume it was made for, same cluster."""
    return (
        ident.role is Role.ENGINE
        and ident.tenant is None
        and grant.engine == ident.name
        and grant.cluster == ident.cluster
    )


def grant_allows(
    ident: Identity,
    grant: ReadGrant,
    op: str,
    replica_volume: str | None,
    snapshot: str | None = None,
) -> bool:
    """May ``ident``, holding the verified read ``grant`` (``grants.verify``: signed by a
    manager of the cluster, unexpired when presented), run ``op`` on a replica of
    ``replica_volume``? Only the engine the grant names; only the granted volume's
    replicas; only GRANT_OPS (never WRITE, TRIM, WRITE_ZEROES, FLUSH, SNAPSHOT_CREATE,
    _DELETE, _REVERT, CREATE, DELETE, IMPORT, REPAIR, ...); data reads only of the granted
    snapshot (``snapshot``: the one the request names)."""
    if not grant_holder(ident, grant) or op not in GRANT_OPS:
        return False
    if op not in ("HELLO", "LIST") and replica_volume != grant.volume:
        return False
    return op not in GRANT_SNAPSHOT_OPS or snapshot == grant.snapshot


# --- the NBD endpoint -----------------------------------------------------------------------


def nbd_client_allowed(ident: Identity, node: str) -> bool:
    """May ``ident`` use the network NBD endpoint of a volume attached to ``node``?

    Only the node the volume is attached to: its agent's identity ``agent/<node>``, which
    the consumers there (the CSI node plugin, qemu) are given as their client certificate.
    Not another node, not an engine or replica server, not a person (an admin reads a
    volume by attaching it), not a tenant's identity. The endpoint is local (a unix socket
    or loopback, no certificate) unless the operator puts it on the network."""
    return ident.role is Role.AGENT and ident.tenant is None and ident.name == node


def nbd_authorizer(volume: str, node: str) -> Callable[[Identity | None], Identity]:
    """The ``authorize`` of a volume's network NBD endpoint (``frontend/nbd_server.py``):
    admits ``nbd_client_allowed`` identities, raises Unauthenticated without a cargohold
    identity and PermissionDenied for any other."""

    def authorize(ident: Identity | None) -> Identity:
        if ident is None:
            raise Unauthenticated("no cargohold certificate presented")
        if not nbd_client_allowed(ident, node):
            raise PermissionDenied(
                f"{ident} may not use the NBD endpoint of volume {volume}: only agent/{node}, "
                "the node it is attached to"
            )
        return ident

    return authorize
