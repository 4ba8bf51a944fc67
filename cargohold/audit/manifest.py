"""One Kubernetes object as the auditor sees it: its data plus where each field came from.

``loader``, ``kustomize`` and ``cluster`` build ``Manifest`` values; ``inventory`` indexes
them and the checks read them. A field is named by a path of keys and list indexes, such as
``("spec", "volumes", 0, "emptyDir")``; ``location(path)`` answers with the file and line of
that field, or of the nearest enclosing field that has a line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cargohold.audit.model import Location, ObjectRef

FieldPath = tuple[str | int, ...]

LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"

CLUSTER_SCOPED_KINDS = frozenset(
    {
        "StorageClass",
        "VolumeSnapshotClass",
        "Namespace",
        "Node",
        "PersistentVolume",
        "CSIDriver",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    }
)


def format_path(path: FieldPath) -> str:
    """``("spec", "volumes", 0, "emptyDir")`` -> ``"spec.volumes[0].emptyDir"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, eq=False)
class Manifest:
    """A Kubernetes object and the line of each of its fields in its source.

    ``lines`` maps paths (relative to the whole document, so ``base`` is prepended) to
    1-based line numbers; it is empty for objects read from a live cluster.
    """

    obj: dict[str, Any]
    source: str
    lines: Mapping[FieldPath, int] = field(default_factory=dict)
    base: FieldPath = ()
    is_file: bool = True
    origin: str = "file"
    """``file``, ``stdin``, ``kustomize`` or ``cluster``."""

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind") or "")

    @property
    def api_version(self) -> str:
        return str(self.obj.get("apiVersion") or "")

    @property
    def api_group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def metadata(self) -> dict[str, Any]:
        return mapping(self.obj.get("metadata"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.metadata.get("generateName") or "")

    @property
    def namespace(self) -> str | None:
        """The namespace as written; ``None`` when unset or cluster-scoped."""
        if self.kind in CLUSTER_SCOPED_KINDS:
            return None
        ns = self.metadata.get("namespace")
        return str(ns) if ns else None

    @property
    def ns_key(self) -> str:
        """The namespace used to join objects: unset means the apply-time ``default``."""
        if self.kind in CLUSTER_SCOPED_KINDS:
            return ""
        return self.namespace or "default"

    @property
    def labels(self) -> dict[str, str]:
        return str_map(self.metadata.get("labels"))

    @property
    def annotations(self) -> dict[str, str]:
        return str_map(self.metadata.get("annotations"))

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity used to join and de-duplicate objects: (kind, namespace, name)."""
        return (self.kind, self.ns_key, self.name)

    def ref(self) -> ObjectRef:
        return ObjectRef(kind=self.kind, name=self.name, namespace=self.namespace)

    def declares(self, key: str) -> bool:
        """Whether the author wrote top-level field ``key``. Objects read from a cluster
        carry API-server defaults (a StorageClass always has a reclaimPolicy); when kubectl
        recorded what was applied, that record decides."""
        if key not in self.obj:
            return False
        if self.origin != "cluster":
            return True
        applied = self.annotations.get(LAST_APPLIED_ANNOTATION)
        if not applied:
            return True
        try:
            original = json.loads(applied)
        except ValueError:
            return True
        return not isinstance(original, dict) or key in original

    def get(self, path: FieldPath, default: Any = None) -> Any:
        """The value at ``path`` or ``default`` when any step is missing."""
        node: Any = self.obj
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or not -len(node) <= part < len(node):
                    return default
            elif not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def line_of(self, path: FieldPath = ()) -> int | None:
        """The line of ``path``, else of its nearest ancestor that has one."""
        full = self.base + tuple(path)
        for end in range(len(full), -1, -1):
            line = self.lines.get(full[:end])
            if line is not None:
                return line
        return None

    def location(self, path: FieldPath = ()) -> Location:
        return Location(source=self.source, line=self.line_of(path), is_file=self.is_file)


def mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is a mapping, else empty: manifests are untrusted input."""
    return value if isinstance(value, dict) else {}


def sequence(value: Any) -> list[Any]:
    """``value`` if it is a list, else empty."""
    return value if isinstance(value, list) else []


def str_map(value: Any) -> dict[str, str]:
    """Labels or annotations as ``str -> str``; anything that is not a mapping is empty."""
    if not isinstance(value, dict):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}
