"""Tenants (pure): who sees which volume, whose a new volume is, and the quota arithmetic.

A tenant is one user of the storage cluster — typically one Kubernetes cluster, whose CSI
driver holds a certificate (or token) with ``?tenant=<name>`` (security/identity.py). A
volume belongs to one tenant (``Volume.tenant``; None: the storage provider's own); its
snapshots, replicas, attachments, operations and events follow it. An identity with a tenant
sees only that tenant's volumes; the admin (an identity without a tenant) sees all. An object
the caller may not see is answered exactly as one that does not exist (NotFound, 404), so a
tenant cannot learn another's volume names by probing.

The quota is on provisioned size: the sum of ``size_bytes`` of the tenant's volumes (every
record, including volumes being deleted or released: their space is held until they are
gone), where a pending expansion counts at its target size. Creates and expansions are
admitted in one state-store transaction with the tenant record (``Tenant.allocations``),
so two concurrent ones cannot both pass the check on the same reading.

``Service`` (service_volumes.py, service_snapshots.py, service_tenants.py) calls these with
the caller's ``Identity`` (``who``; None: the manager itself, unscoped) and the records.
"""

from __future__ import annotations

from collections.abc import Iterable

from cargohold.control.access import Tenant
from cargohold.control.model import Operation, OperationKind, Volume
from cargohold.errors import InvalidArgument, NotFound, PermissionDenied, Unschedulable
from cargohold.security.identity import Identity
from cargohold.security.policy import sees


def scope(who: Identity | None) -> str | None:
    """The tenant ``who`` is confined to (None: not confined — the admin, or the manager)."""
    return None if who is None else who.tenant


def visible(who: Identity | None, vol: Volume) -> bool:
    return who is None or sees(who, vol.tenant)


def only_visible(who: Identity | None, vols: Iterable[Volume]) -> list[Volume]:
    return [v for v in vols if visible(who, v)]


def check_visible(who: Identity | None, vol: Volume) -> Volume:
    """``vol``, or NotFound worded as for a volume that does not exist."""
    if not visible(who, vol):
        raise NotFound(f"volume {vol.name} not found")
    return vol


def owner_for_create(who: Identity | None, requested: str | None) -> str | None:
    """Whose a new volume is: the caller's own tenant; an unscoped caller (the admin) may
    name a tenant explicitly. A tenant naming another tenant is refused."""
    mine = scope(who)
    if mine is None:
        return requested
    if requested is not None and requested != mine:
        raise PermissionDenied(f"{who} may create volumes only for tenant {mine}")
    return mine


def clone_source_allowed(owner: str | None, source: Volume) -> None:
    """A clone stays within its tenant: a tenant's volume is cloned only into that tenant
    (the admin may clone the provider's own volumes into a tenant)."""
    if source.tenant is not None and source.tenant != owner:
        raise InvalidArgument(
            f"volume {source.name} belongs to another tenant: a clone stays in its tenant"
        )


# --- the quota -----------------------------------------------------------------------------


def pending_expansions(ops: Iterable[Operation]) -> dict[str, int]:
    """volume -> the largest target size of its expansions not finished yet."""
    out: dict[str, int] = {}
    for op in ops:
        if op.kind is OperationKind.EXPAND and not op.done:
            size = op.args.get("logical_size_bytes", op.args.get("size_bytes"))
            if isinstance(size, int):
                out[op.volume] = max(out.get(op.volume, 0), size)
    return out


def usage(tenant: str, vols: Iterable[Volume], ops: Iterable[Operation] = ()) -> int:
    """The tenant's provisioned bytes: its volumes at their size, or at the target of an
    expansion still under way."""
    pending = pending_expansions(ops)
    return sum(max(v.size_bytes, pending.get(v.name, 0)) for v in vols if v.tenant == tenant)


def check_quota(tenant: Tenant, used: int, more: int, what: str) -> None:
    """Unschedulable (507) when ``more`` bytes on top of ``used`` exceed the quota."""
    if tenant.quota_bytes is None or more <= 0:
        return
    if used + more > tenant.quota_bytes:
        raise Unschedulable(
            f"{what} would exceed tenant {tenant.name}'s quota: it uses {used} of "
            f"{tenant.quota_bytes} bytes ({human(used)} of {human(tenant.quota_bytes)}), "
            f"{what} needs {more} more ({human(more)})"
        )


def human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"


def tenant_view(tenant: Tenant, used: int, volumes: int) -> dict[str, object]:
    return {
        "name": tenant.name,
        "quota_bytes": tenant.quota_bytes,
        "used_bytes": used,
        "volumes": volumes,
        "created_at": tenant.created_at,
    }
