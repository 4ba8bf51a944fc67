"""Workloads and claims: the pod-bearing objects and the PVCs they use, kind-independent.

A Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job and
CronJob all carry a pod spec at a different path; ``Workload`` hides that difference so
the checks ask one set of questions (replicas, containers, volumes, "is it a database?").
``Claim`` does the same for the three ways a pod gets a PVC: a PersistentVolumeClaim
object, a StatefulSet volumeClaimTemplate and a generic ephemeral volume. ``inventory``
builds both; ``checks`` and ``matrix`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cargohold.audit import knowledge
from cargohold.audit.manifest import FieldPath, Manifest, mapping, sequence, str_map
from cargohold.audit.model import ObjectRef

_TEMPLATE = ("spec", "template", "spec")
POD_SPEC_PATHS: dict[str, FieldPath] = {
    "Pod": ("spec",),
    "Deployment": _TEMPLATE,
    "StatefulSet": _TEMPLATE,
    "DaemonSet": _TEMPLATE,
    "ReplicaSet": _TEMPLATE,
    "ReplicationController": _TEMPLATE,
    "Job": _TEMPLATE,
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
WORKLOAD_GROUPS = frozenset({"", "apps", "batch", "extensions"})

RWO = "ReadWriteOnce"
RWOP = "ReadWriteOncePod"
RWX = "ReadWriteMany"
ROX = "ReadOnlyMany"


def is_workload(manifest: Manifest) -> bool:
    return manifest.kind in POD_SPEC_PATHS and manifest.api_group in WORKLOAD_GROUPS


@dataclass(frozen=True, eq=False)
class ClaimUse:
    """One pod volume backed by a claim, as the pod template declares it."""

    volume_name: str
    claim_name: str
    source: str
    """``pvc`` (persistentVolumeClaim.claimName), ``template`` or ``ephemeral``."""
    path: FieldPath
    read_only: bool
    containers: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Workload:
    """A pod-bearing object and the path of its pod spec."""

    manifest: Manifest
    pod_path: FieldPath

    @classmethod
    def of(cls, manifest: Manifest) -> Workload:
        return cls(manifest=manifest, pod_path=POD_SPEC_PATHS[manifest.kind])

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def ns_key(self) -> str:
        return self.manifest.ns_key

    def ref(self) -> ObjectRef:
        return self.manifest.ref()

    def __str__(self) -> str:
        return str(self.ref())

    @cached_property
    def pod_spec(self) -> dict[str, Any]:
        return mapping(self.manifest.get(self.pod_path))

    @cached_property
    def template_meta(self) -> dict[str, Any]:
        return mapping(self.manifest.get((*self.pod_path[:-1], "metadata")))

    @cached_property
    def labels(self) -> dict[str, str]:
        """Object labels overlaid with pod template labels."""
        return self.manifest.labels | str_map(self.template_meta.get("labels"))

    @cached_property
    def annotations(self) -> dict[str, str]:
        """Object annotations overlaid with pod template annotations."""
        return self.manifest.annotations | str_map(self.template_meta.get("annotations"))

    @cached_property
    def replicas(self) -> int | None:
        """How many pods run this template at once; ``None`` for one per node."""
        if self.kind == "DaemonSet":
            return None
        if self.kind == "Pod":
            return 1
        if self.kind == "Job":
            value = self.manifest.get(("spec", "parallelism"), 1)
        elif self.kind == "CronJob":
            value = self.manifest.get(("spec", "jobTemplate", "spec", "parallelism"), 1)
        else:
            value = self.manifest.get(("spec", "replicas"), 1)
        return value if isinstance(value, int) and not isinstance(value, bool) else 1

    @property
    def multi_pod(self) -> bool:
        return self.replicas is None or self.replicas > 1

    @property
    def pods_text(self) -> str:
        if self.replicas is None:
            return "one pod per node"
        return f"{self.replicas} pod" + ("s" if self.replicas != 1 else "")

    def containers(self, *, init: bool = False) -> list[tuple[FieldPath, dict[str, Any]]]:
        """(path, container) for every container; init containers too when ``init``."""
        keys = ("initContainers", "containers") if init else ("containers",)
        out = []
        for key in keys:
            for i, container in enumerate(sequence(self.pod_spec.get(key))):
                if isinstance(container, dict):
                    out.append(((*self.pod_path, key, i), container))
        return out

    def volumes(self) -> list[tuple[FieldPath, dict[str, Any]]]:
        return [
            ((*self.pod_path, "volumes", i), vol)
            for i, vol in enumerate(sequence(self.pod_spec.get("volumes")))
            if isinstance(vol, dict)
        ]

    @cached_property
    def images(self) -> tuple[str, ...]:
        return tuple(str(c.get("image") or "") for _, c in self.containers())

    @cached_property
    def app_tokens(self) -> set[str]:
        """Tokens of the container images and app labels: what this workload runs."""
        found = knowledge.label_tokens(self.labels)
        for image in self.images:
            found |= knowledge.image_tokens(image)
        return found

    @cached_property
    def database_hint(self) -> str | None:
        """Why this looks like a database (``image postgres:16``), or ``None``."""
        for image in self.images:
            if knowledge.image_tokens(image) & knowledge.DATABASE_TOKENS:
                return f"image {image}"
        for key in knowledge.APP_LABEL_KEYS:
            if key in self.labels and knowledge.tokens(self.labels[key]) & (
                knowledge.DATABASE_TOKENS
            ):
                return f"label {key}={self.labels[key]}"
        return None

    @property
    def is_database(self) -> bool:
        return self.database_hint is not None

    @cached_property
    def is_csi(self) -> bool:
        if knowledge.has_csi_label(self.labels):
            return True
        return any(knowledge.is_csi_container(c) for _, c in self.containers(init=True))

    @cached_property
    def sensitive_marker(self) -> str | None:
        return knowledge.sensitive_marker(self.labels, self.annotations)

    def mounting_containers(self, volume: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(container, volumeMount) for each container that mounts ``volume``."""
        out = []
        for _, container in self.containers(init=True):
            for mount in sequence(container.get("volumeMounts")):
                if isinstance(mount, dict) and mount.get("name") == volume:
                    out.append((container, mount))
        return out

    @cached_property
    def claim_uses(self) -> tuple[ClaimUse, ...]:
        """Every volume of this pod template that is backed by a PVC."""
        uses: list[ClaimUse] = []
        declared: set[str] = set()
        for path, vol in self.volumes():
            name = str(vol.get("name") or "")
            declared.add(name)
            pvc = vol.get("persistentVolumeClaim")
            if isinstance(pvc, dict) and pvc.get("claimName"):
                uses.append(
                    self._use(name, str(pvc["claimName"]), "pvc", path, bool(pvc.get("readOnly")))
                )
            elif isinstance(vol.get("ephemeral"), dict):
                claim_path = (*path, "ephemeral", "volumeClaimTemplate")
                uses.append(self._use(name, name, "ephemeral", claim_path, False))
        if self.kind == "StatefulSet":
            templates = sequence(self.manifest.get(("spec", "volumeClaimTemplates")))
            for i, tpl in enumerate(templates):
                name = str(mapping(mapping(tpl).get("metadata")).get("name") or "")
                if name and name not in declared:
                    path = ("spec", "volumeClaimTemplates", i)
                    uses.append(self._use(name, name, "template", path, False))
        return tuple(uses)

    def _use(self, volume: str, claim: str, source: str, path: FieldPath, ro: bool) -> ClaimUse:
        mounts = self.mounting_containers(volume)
        read_only = ro or (bool(mounts) and all(bool(m.get("readOnly")) for _, m in mounts))
        names = tuple(str(c.get("name") or "") for c, _ in mounts)
        return ClaimUse(volume, claim, source, path, read_only, names)

    def non_root_reason(self, container: dict[str, Any]) -> str | None:
        """Why ``container`` runs as non-root (``runAsUser 1000``), or ``None``."""
        pod_sc = mapping(self.pod_spec.get("securityContext"))
        own_sc = mapping(container.get("securityContext"))
        uid = own_sc.get("runAsUser", pod_sc.get("runAsUser"))
        non_root = own_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if isinstance(uid, int) and not isinstance(uid, bool):
            return f"runAsUser {uid}" if uid != 0 else None
        return "runAsNonRoot" if non_root is True else None


@dataclass(frozen=True, eq=False)
class Claim:
    """A PVC as written: a PersistentVolumeClaim object, or a template inside a workload."""

    manifest: Manifest
    path: FieldPath
    source: str
    """``pvc``, ``template`` (StatefulSet volumeClaimTemplate) or ``ephemeral``."""
    name: str
    owner: Workload | None = None

    @property
    def ns_key(self) -> str:
        return self.manifest.ns_key

    @property
    def key(self) -> tuple[str, str]:
        return (self.ns_key, self.name)

    def ref(self) -> ObjectRef:
        return self.manifest.ref()

    @cached_property
    def obj(self) -> dict[str, Any]:
        return mapping(self.manifest.get(self.path))

    @property
    def spec(self) -> dict[str, Any]:
        return mapping(self.obj.get("spec"))

    @property
    def _metadata(self) -> dict[str, Any]:
        return mapping(self.obj.get("metadata"))

    @property
    def labels(self) -> dict[str, str]:
        return str_map(self._metadata.get("labels"))

    @property
    def annotations(self) -> dict[str, str]:
        return str_map(self._metadata.get("annotations"))

    @property
    def access_modes(self) -> tuple[str, ...]:
        modes = self.spec.get("accessModes")
        if isinstance(modes, str):  # a common slip: one mode written without a list
            return (modes,)
        return tuple(str(m) for m in sequence(modes))

    @property
    def access_modes_path(self) -> FieldPath:
        return (*self.path, "spec", "accessModes")

    @property
    def single_node_only(self) -> bool:
        """RWO / RWOP only: the volume attaches to one node (RWOP: one pod)."""
        modes = set(self.access_modes)
        return bool(modes) and modes <= {RWO, RWOP}

    @property
    def explicit_class(self) -> str | None:
        """The class named by ``storageClassName`` (or the legacy annotation); ``""`` means
        "no class, bind a pre-created PV"; ``None`` means "unset: the default class"."""
        value = self.spec.get("storageClassName")
        if value is not None:
            return str(value)
        return self.annotations.get("volume.beta.kubernetes.io/storage-class")

    @property
    def binds_static_volume(self) -> bool:
        return (
            self.explicit_class == ""
            or bool(self.spec.get("volumeName"))
            or "selector" in self.spec
        )

    def describe(self) -> str:
        if self.source == "pvc":
            return f"PVC {self.name}"
        what = "volumeClaimTemplate" if self.source == "template" else "ephemeral volume"
        return f"{what} {self.name} of {self.manifest.kind} {self.manifest.name}"
