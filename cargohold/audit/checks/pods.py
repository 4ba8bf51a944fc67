"""Checks on pod templates: fsGroup, CSI pod resources and memory-backed emptyDirs.

CH004, CH007 and CH010. Every workload kind is handled alike through ``Workload``.
"""

from __future__ import annotations

from collections.abc import Iterator

from cargohold.audit.checks.registry import Hit, check
from cargohold.audit.inventory import Inventory
from cargohold.audit.manifest import mapping
from cargohold.audit.workloads import ClaimUse, Workload


def _non_root_claim_mount(w: Workload) -> tuple[ClaimUse, dict, str] | None:
    """The first (claim, container, reason) where a non-root container mounts a claim."""
    for use in w.claim_uses:
        for container, _ in w.mounting_containers(use.volume_name):
            reason = w.non_root_reason(container)
            if reason:
                return use, container, reason
    return None


@check("CH004")
def missing_fs_group(inv: Inventory) -> Iterator[Hit]:
    for w in inv.workloads:
        spec = w.pod_spec
        if mapping(spec.get("securityContext")).get("fsGroup") is not None:
            continue
        if mapping(spec.get("os")).get("name") == "windows":
            continue
        found = _non_root_claim_mount(w)
        if found is None:
            continue
        use, container, reason = found
        what = f"PVC {use.claim_name}" if use.source == "pvc" else use.claim_name
        yield Hit(
            w.manifest,
            (*w.pod_path, "securityContext"),
            f"container {container.get('name')} mounts {what} and runs as non-root ({reason}) "
            "but the pod sets no securityContext.fsGroup",
        )


def _missing_resources(container: dict) -> list[str]:
    resources = mapping(container.get("resources"))
    requests = mapping(resources.get("requests"))
    limits = mapping(resources.get("limits"))
    missing = []
    # A limit without a request makes the request equal to the limit.
    if "cpu" not in requests and "cpu" not in limits:
        missing.append("cpu request")
    if "memory" not in requests and "memory" not in limits:
        missing.append("memory request")
    if "memory" not in limits:
        missing.append("memory limit")
    return missing


@check("CH007")
def csi_without_resources(inv: Inventory) -> Iterator[Hit]:
    for w in inv.workloads:
        if not w.is_csi:
            continue
        for path, container in w.containers():
            missing = _missing_resources(container)
            if missing:
                yield Hit(
                    w.manifest,
                    (*path, "resources"),
                    f"CSI container {container.get('name')} ({container.get('image')}) has no "
                    + ", ".join(missing),
                )


@check("CH010")
def memory_empty_dir(inv: Inventory) -> Iterator[Hit]:
    for w in inv.workloads:
        for path, volume in w.volumes():
            empty_dir = volume.get("emptyDir")
            if not isinstance(empty_dir, dict) or empty_dir.get("medium") != "Memory":
                continue
            if not empty_dir.get("sizeLimit"):
                yield Hit(
                    w.manifest,
                    (*path, "emptyDir"),
                    f"emptyDir {volume.get('name')} is memory-backed with no sizeLimit; "
                    "what is written there counts as pod memory and can get it OOM-killed",
                )
