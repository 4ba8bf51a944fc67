"""Checks on claims and the workloads that mount them: access modes meet pod counts.

CH003, CH006, CH009, CH014, CH015 and CH016. A claim is a PVC object, a StatefulSet
volumeClaimTemplate or a generic ephemeral volume; mounts come from ``Inventory.mounts``,
so a PVC and the workload mounting it may sit in different files.
"""

from __future__ import annotations

from collections.abc import Iterator

from cargohold.audit import knowledge
from cargohold.audit.checks.registry import Hit, check
from cargohold.audit.inventory import Inventory, Mount
from cargohold.audit.workloads import RWO, RWOP, RWX, Claim, Workload


def _distinct(workloads: list[Workload]) -> list[Workload]:
    out: list[Workload] = []
    for w in workloads:
        if not any(w is o for o in out):
            out.append(w)
    return out


@check("CH003")
def rwx_database(inv: Inventory) -> Iterator[Hit]:
    for claim, mounts in inv.claim_mounts():
        if RWX not in claim.access_modes:
            continue
        for w in _distinct([m.workload for m in mounts if m.writable and m.workload.is_database]):
            who = "its own database pods" if w is claim.owner else f"database {w}"
            yield Hit(
                claim.manifest,
                claim.access_modes_path,
                f"{claim.describe()} is ReadWriteMany and mounted read-write by {who} "
                f"({w.database_hint})",
            )


def _pod_count(mounts: list[Mount]) -> int | None:
    """Pods writing through ``mounts``; ``None`` when a DaemonSet makes it one per node."""
    total = 0
    for w in _distinct([m.workload for m in mounts]):
        if w.replicas is None:
            return None
        total += w.replicas
    return total


@check("CH016")
def rwx_many_writers(inv: Inventory) -> Iterator[Hit]:
    for claim, mounts in inv.claim_mounts():
        writers = [m for m in mounts if m.writable]
        if RWX not in claim.access_modes or any(m.workload.is_database for m in writers):
            continue
        count = _pod_count(writers)
        if count is not None and count < 2:
            continue
        detail = ", ".join(f"{w} ({w.pods_text})" for w in _distinct([m.workload for m in writers]))
        yield Hit(
            claim.manifest,
            claim.access_modes_path,
            f"{claim.describe()} is ReadWriteMany and written by several pods: {detail}",
        )


def _sensitive_reason(claim: Claim, mounts: list[Mount], inv: Inventory) -> str | None:
    marker = knowledge.sensitive_marker(claim.labels, claim.annotations)
    if marker:
        return f"the claim is marked {marker}"
    for w in _distinct([m.workload for m in mounts]):
        if w.sensitive_marker:
            return f"{w} is marked {w.sensitive_marker}"
    ns_marker = inv.namespace_marker(claim.ns_key)
    if ns_marker:
        return f"namespace {claim.ns_key} is marked {ns_marker}"
    return None


@check("CH006")
def rwo_for_sensitive(inv: Inventory) -> Iterator[Hit]:
    for claim, mounts in inv.claim_mounts():
        modes = claim.access_modes
        if RWO not in modes or RWOP in modes:
            continue
        reason = _sensitive_reason(claim, mounts, inv)
        if reason:
            yield Hit(
                claim.manifest,
                claim.access_modes_path,
                f"{claim.describe()} is ReadWriteOnce but holds sensitive data ({reason}); "
                "any pod on the same node can mount it",
            )


@check("CH009")
def shared_rwo(inv: Inventory) -> Iterator[Hit]:
    for claim, mounts in inv.claim_mounts():
        if claim.source != "pvc" or not claim.single_node_only:
            continue
        users = _distinct([m.workload for m in mounts])
        mode = RWOP if RWOP in claim.access_modes else RWO
        for mount in mounts:
            w = mount.workload
            others = [o for o in users if o is not w]
            if w.multi_pod:
                why = f"{w.kind} runs {w.pods_text}, all mounting {mode} PVC {claim.name}"
            elif others:
                why = f"{mode} PVC {claim.name} is also mounted by {others[0]}"
            else:
                continue
            effect = (
                "only one pod at a time can use it, the others stay Pending"
                if mode == RWOP
                else "pods on other nodes fail to attach it, pods on one node share it"
            )
            yield Hit(
                w.manifest,
                (*mount.use.path, "persistentVolumeClaim", "claimName"),
                f"{why}; {effect}",
            )


@check("CH015")
def rwo_rolling_update(inv: Inventory) -> Iterator[Hit]:
    seen: list[Workload] = []
    for mount in inv.mounts:
        w, claim = mount.workload, mount.claim
        if w.kind != "Deployment" or w.multi_pod or claim is None or any(w is s for s in seen):
            continue
        if not claim.single_node_only:
            continue
        strategy = w.manifest.get(("spec", "strategy", "type")) or "RollingUpdate"
        if strategy == "Recreate":
            continue
        seen.append(w)
        mode = RWOP if RWOP in claim.access_modes else RWO
        yield Hit(
            w.manifest,
            ("spec", "strategy"),
            f"strategy is {strategy} with {mode} PVC {claim.name}: a rollout starts the new "
            "pod before the old one releases the volume and can hang on it",
        )


@check("CH014")
def no_class_no_default(inv: Inventory) -> Iterator[Hit]:
    if not inv.storage_classes or inv.default_class is not None:
        return
    known = ", ".join(sorted(inv.storage_classes))
    for claim in inv.claims:
        if claim.explicit_class is None and not claim.binds_static_volume:
            yield Hit(
                claim.manifest,
                (*claim.path, "spec"),
                f"{claim.describe()} sets no storageClassName and no StorageClass in the "
                f"inputs ({known}) is the default; it stays Pending",
            )
