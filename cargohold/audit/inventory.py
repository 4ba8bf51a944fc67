"""The joined view of all inputs: classes, claims, workloads and who mounts what.

``engine`` builds one ``Inventory`` from every manifest (files, kustomize output, a live
cluster) and hands it to each check and to ``matrix``. Objects are joined by namespace and
name across files, so a PVC in one file and the StatefulSet that mounts it in another meet
here. Objects whose controller is also in the inputs (the Pods of a ReplicaSet, the
ReplicaSet of a Deployment, the PVCs a StatefulSet stamped from its templates) are folded
into their owner so that one mistake is reported once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from cargohold.audit import knowledge
from cargohold.audit.manifest import Manifest, sequence
from cargohold.audit.workloads import Claim, ClaimUse, Workload, is_workload

SCHEDULE_KINDS = frozenset({"SnapshotSchedule", "VolumeSnapshotSchedule", "ScheduledBackup"})
SCHEDULE_KINDS_BY_GROUP = {("Schedule", "velero.io"), ("RecurringJob", "longhorn.io")}


@dataclass(frozen=True, eq=False)
class Mount:
    """A workload's use of a claim. ``claim`` is ``None`` when the PVC is not in the inputs."""

    workload: Workload
    use: ClaimUse
    claim: Claim | None

    @property
    def writable(self) -> bool:
        return not self.use.read_only


class Inventory:
    """Indexes over the inputs. Build once, read many times; nothing here mutates."""

    def __init__(self, manifests: Iterable[Manifest]) -> None:
        self.manifests = _prefer_files(list(manifests))
        self.storage_classes: dict[str, Manifest] = {}
        self.snapshot_classes: list[Manifest] = []
        self.namespaces: dict[str, Manifest] = {}
        self.nodes: list[Manifest] = []
        self.snapshot_schedules: list[Manifest] = []
        self.workloads: list[Workload] = []
        self.claims: list[Claim] = []
        self.mounts: list[Mount] = []
        self.warnings: list[str] = _duplicates(self.manifests)
        keys = {m.key for m in self.manifests}
        pvcs: list[Manifest] = []
        for m in self.manifests:
            kind = m.kind
            if kind == "StorageClass":
                self.storage_classes.setdefault(m.name, m)
            elif kind == "VolumeSnapshotClass":
                self.snapshot_classes.append(m)
            elif kind == "Namespace":
                self.namespaces.setdefault(m.name, m)
            elif kind == "Node":
                self.nodes.append(m)
            elif kind == "PersistentVolumeClaim":
                pvcs.append(m)
            elif is_workload(m) and not _owned_by_input(m, keys):
                self.workloads.append(Workload.of(m))
            if _is_snapshot_schedule(m):
                self.snapshot_schedules.append(m)
        self._join(pvcs)

    def _join(self, pvcs: list[Manifest]) -> None:
        stamped = _stamped_claim_patterns(self.workloads)
        by_key: dict[tuple[str, str], Claim] = {}
        for m in pvcs:
            if _is_stamped(m, stamped) or _owned_by_pod(m):
                continue
            claim = Claim(manifest=m, path=(), source="pvc", name=m.name)
            self.claims.append(claim)
            by_key.setdefault(claim.key, claim)
        for workload in self.workloads:
            for use in workload.claim_uses:
                used: Claim | None  # None: the PVC is not in the inputs
                if use.source == "pvc":
                    used = by_key.get((workload.ns_key, use.claim_name))
                else:
                    used = Claim(
                        manifest=workload.manifest,
                        path=use.path,
                        source=use.source,
                        name=use.claim_name,
                        owner=workload,
                    )
                    self.claims.append(used)
                self.mounts.append(Mount(workload=workload, use=use, claim=used))

    # --- questions the checks ask -------------------------------------------------------

    @cached_property
    def default_class(self) -> str | None:
        for name, sc in self.storage_classes.items():
            if any(
                sc.annotations.get(a, "").lower() == "true"
                for a in knowledge.DEFAULT_CLASS_ANNOTATIONS
            ):
                return name
        return None

    @cached_property
    def zones(self) -> set[str]:
        """Zones of the nodes in the inputs (cluster mode, or Node manifests)."""
        found = set()
        for node in self.nodes:
            for label in knowledge.ZONE_LABELS:
                if node.labels.get(label):
                    found.add(node.labels[label])
                    break
        return found

    def class_name_of(self, claim: Claim) -> str | None:
        """The StorageClass a claim provisions from, the default class when unset."""
        explicit = claim.explicit_class
        if explicit is None:
            return self.default_class
        return explicit or None

    def mounts_of(self, claim: Claim) -> list[Mount]:
        return [m for m in self.mounts if m.claim is claim]

    def claim_mounts(self) -> list[tuple[Claim, list[Mount]]]:
        """Every claim with the mounts that use it (possibly none)."""
        return [(claim, self.mounts_of(claim)) for claim in self.claims]

    def workloads_using_class(self, class_name: str) -> list[Workload]:
        """Workloads that mount a claim provisioned from ``class_name``, in input order."""
        out: list[Workload] = []
        for mount in self.mounts:
            if mount.claim is None or self.class_name_of(mount.claim) != class_name:
                continue
            if not any(w is mount.workload for w in out):
                out.append(mount.workload)
        return out

    def claims_using_class(self, class_name: str) -> list[Claim]:
        return [c for c in self.claims if self.class_name_of(c) == class_name]

    def namespace_marker(self, ns_key: str) -> str | None:
        """The label/annotation marking namespace ``ns_key`` as holding sensitive data."""
        ns = self.namespaces.get(ns_key)
        if ns is None:
            return None
        return knowledge.sensitive_marker(ns.labels, ns.annotations)


def _prefer_files(manifests: list[Manifest]) -> list[Manifest]:
    """Drop cluster copies of objects that the files also define: the files are the
    desired state being checked against the cluster."""
    from_files = {m.key for m in manifests if m.origin != "cluster"}
    return [m for m in manifests if m.origin != "cluster" or m.key not in from_files]


def _duplicates(manifests: list[Manifest]) -> list[str]:
    """Warnings for objects defined more than once (joins use the first definition)."""
    seen: dict[tuple[str, str, str], Manifest] = {}
    out = []
    for m in manifests:
        first = seen.setdefault(m.key, m)
        if first is not m:
            out.append(
                f"{m.location()}: {m.ref()} is also defined at {first.location()}; "
                "PVC and StorageClass joins use the first definition"
            )
    return out


def _controller_refs(manifest: Manifest) -> list[dict]:
    refs = sequence(manifest.metadata.get("ownerReferences"))
    return [r for r in refs if isinstance(r, dict) and r.get("controller")]


def _owned_by_input(manifest: Manifest, keys: set[tuple[str, str, str]]) -> bool:
    return any(
        (str(r.get("kind")), manifest.ns_key, str(r.get("name"))) in keys
        for r in _controller_refs(manifest)
    )


def _owned_by_pod(manifest: Manifest) -> bool:
    """Generic ephemeral volumes: the PVC belongs to its Pod's template."""
    return any(r.get("kind") == "Pod" for r in _controller_refs(manifest))


def _stamped_claim_patterns(workloads: list[Workload]) -> dict[str, list[re.Pattern[str]]]:
    """Per namespace, the names of PVCs that StatefulSets in the inputs create from their
    templates (``<template>-<statefulset>-<ordinal>``, e.g. ``data-pg-0``)."""
    patterns: dict[str, list[re.Pattern[str]]] = {}
    for w in workloads:
        for use in w.claim_uses:
            if use.source == "template":
                pattern = re.compile(
                    rf"{re.escape(use.claim_name)}-{re.escape(w.manifest.name)}-\d+"
                )
                patterns.setdefault(w.ns_key, []).append(pattern)
    return patterns


def _is_stamped(manifest: Manifest, patterns: dict[str, list[re.Pattern[str]]]) -> bool:
    return any(p.fullmatch(manifest.name) for p in patterns.get(manifest.ns_key, []))


def _is_snapshot_schedule(manifest: Manifest) -> bool:
    """SnapshotSchedule-like custom resources, or a CronJob whose job mentions snapshots."""
    if manifest.kind in SCHEDULE_KINDS:
        return True
    group = manifest.api_group.split("/")[0]
    if (manifest.kind, group) in SCHEDULE_KINDS_BY_GROUP:
        return True
    if manifest.kind == "CronJob":
        job = manifest.get(("spec", "jobTemplate"))
        return "snapshot" in json.dumps(job, default=str).lower()
    return False
