"""Checks on snapshot readiness: a VolumeSnapshotClass per driver, and a schedule.

CH005 and CH012. Only drivers that back stateful workloads in the inputs are judged, and
only when their StorageClass is in the inputs (the class names the driver).
"""

from __future__ import annotations

from collections.abc import Iterator

from cargohold.audit import knowledge
from cargohold.audit.checks.classes import storage_classes
from cargohold.audit.checks.registry import Hit, check, names
from cargohold.audit.inventory import Inventory
from cargohold.audit.manifest import Manifest
from cargohold.audit.workloads import Workload


def _stateful_classes(inv: Inventory) -> Iterator[tuple[Manifest, str, list[Workload]]]:
    """(StorageClass, CSI driver, workloads using it) for snapshot-capable classes in use."""
    for sc in storage_classes(inv):
        provisioner = str(sc.obj.get("provisioner") or "")
        if not provisioner or provisioner in knowledge.NO_SNAPSHOT_PROVISIONERS:
            continue
        users = inv.workloads_using_class(sc.name)
        if users:
            yield sc, knowledge.csi_driver(provisioner), users


def _snapshot_drivers(inv: Inventory) -> set[str]:
    return {str(vsc.obj.get("driver") or "") for vsc in inv.snapshot_classes}


@check("CH005")
def no_snapshot_class(inv: Inventory) -> Iterator[Hit]:
    have = _snapshot_drivers(inv)
    for sc, driver, users in _stateful_classes(inv):
        if driver not in have:
            yield Hit(
                sc,
                ("provisioner",),
                f"no VolumeSnapshotClass for driver {driver}, which stores the data of "
                f"{names(users)}",
            )


@check("CH012")
def no_snapshot_schedule(inv: Inventory) -> Iterator[Hit]:
    if inv.snapshot_schedules:
        return
    users_by_driver: dict[str, list[Workload]] = {}
    for _, driver, users in _stateful_classes(inv):
        bucket = users_by_driver.setdefault(driver, [])
        bucket += [w for w in users if not any(w is b for b in bucket)]
    for vsc in inv.snapshot_classes:
        driver = str(vsc.obj.get("driver") or "")
        drivers_users = users_by_driver.get(driver)
        if drivers_users:
            yield Hit(
                vsc,
                ("driver",),
                f"driver {driver} can snapshot the volumes of {names(drivers_users)} but no snapshot "
                "schedule was found (snapshot CronJob, SnapshotSchedule, velero Schedule...)",
            )
