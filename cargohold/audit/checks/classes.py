"""Checks on StorageClasses: binding mode, reclaim policy, expansion and encryption.

CH001, CH002, CH008, CH011 and CH013. A class is judged by what uses it: the workloads
that mount claims provisioned from it (explicitly or as the default class).
"""

from __future__ import annotations

from collections.abc import Iterator

from cargohold.audit import knowledge
from cargohold.audit.checks.registry import Hit, check, names
from cargohold.audit.inventory import Inventory
from cargohold.audit.manifest import Manifest, mapping, sequence


def storage_classes(inv: Inventory) -> list[Manifest]:
    """Every StorageClass document, duplicates (e.g. per-environment copies) included."""
    return [m for m in inv.manifests if m.kind == "StorageClass"]


def _provisioner(sc: Manifest) -> str:
    return str(sc.obj.get("provisioner") or "")


def _allowed_zones(sc: Manifest) -> set[str]:
    zones: set[str] = set()
    for term in sequence(sc.obj.get("allowedTopologies")):
        for expr in sequence(mapping(term).get("matchLabelExpressions")):
            expr = mapping(expr)
            if str(expr.get("key", "")).endswith("zone"):
                zones.update(str(v) for v in sequence(expr.get("values")))
    return zones


def _zonal_reason(sc: Manifest, inv: Inventory) -> str | None:
    provisioner = _provisioner(sc)
    if knowledge.is_topology_aware(provisioner):
        return f"provisioner {provisioner} creates zone- or node-bound volumes"
    allowed = _allowed_zones(sc)
    if len(allowed) > 1:
        return f"allowedTopologies spans {len(allowed)} zones ({', '.join(sorted(allowed))})"
    if len(inv.zones) > 1:
        return f"the nodes span {len(inv.zones)} zones ({', '.join(sorted(inv.zones))})"
    return None


@check("CH001")
def immediate_binding(inv: Inventory) -> Iterator[Hit]:
    for sc in storage_classes(inv):
        mode = sc.obj.get("volumeBindingMode")
        if mode not in (None, "Immediate"):
            continue
        reason = _zonal_reason(sc, inv)
        if reason:
            state = "is Immediate" if mode else "is unset (Immediate)"
            yield Hit(sc, ("volumeBindingMode",), f"volumeBindingMode {state} but {reason}")


@check("CH002")
def reclaim_policy_unset(inv: Inventory) -> Iterator[Hit]:
    for sc in storage_classes(inv):
        if sc.declares("reclaimPolicy"):
            continue
        users = inv.workloads_using_class(sc.name)
        if users:
            yield Hit(
                sc,
                ("reclaimPolicy",),
                f"reclaimPolicy is unset (Delete) on a class used by {names(users)}; "
                "deleting the PVC deletes the data",
            )


@check("CH008")
def expansion_disabled(inv: Inventory) -> Iterator[Hit]:
    for sc in storage_classes(inv):
        if "allowVolumeExpansion" in sc.obj:
            continue
        if _provisioner(sc) in knowledge.NO_EXPANSION_PROVISIONERS:
            continue
        growing = [
            w
            for w in inv.workloads_using_class(sc.name)
            if w.kind == "StatefulSet" or w.is_database
        ]
        if growing:
            yield Hit(
                sc,
                ("allowVolumeExpansion",),
                f"allowVolumeExpansion is unset on a class used by {names(growing)}; "
                "its volumes cannot be grown when they fill up",
            )


@check("CH011")
def retain_without_cleanup(inv: Inventory) -> Iterator[Hit]:
    for sc in storage_classes(inv):
        if sc.obj.get("reclaimPolicy") != "Retain":
            continue
        if not knowledge.has_cleanup_note(sc.annotations):
            yield Hit(
                sc,
                ("reclaimPolicy",),
                "reclaimPolicy is Retain but no cleanup policy is documented "
                "(annotation audit.cargohold.io/cleanup-policy); released volumes pile up",
            )


def _sensitive_reason(sc: Manifest, inv: Inventory) -> str | None:
    marker = knowledge.sensitive_marker(sc.labels, sc.annotations)
    if marker:
        return f"the class is marked {marker}"
    for claim in inv.claims_using_class(sc.name):
        ns_marker = inv.namespace_marker(claim.ns_key)
        if ns_marker:
            return f"it backs {claim.describe()} in namespace {claim.ns_key} ({ns_marker})"
    return None


@check("CH013")
def sensitive_unencrypted(inv: Inventory) -> Iterator[Hit]:
    for sc in storage_classes(inv):
        provisioner = _provisioner(sc)
        if knowledge.csi_driver(provisioner) in knowledge.ENCRYPTED_AT_REST_BY_DEFAULT:
            continue
        if knowledge.has_encryption(mapping(sc.obj.get("parameters"))):
            continue
        reason = _sensitive_reason(sc, inv)
        if reason:
            yield Hit(
                sc,
                ("parameters",),
                f"no encryption parameter although {reason}",
            )
