"""Shared helpers for the auditor tests: the corpus location, a one-call audit, the exact
shape findings are compared in, and a recorded-cluster fake of the kubernetes client.

Imported by the test modules next to it (pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cargohold.audit.cluster import Apis, ClusterReader
from cargohold.audit.engine import audit
from cargohold.audit.loader import ManifestLoader
from cargohold.audit.model import AuditResult, Finding

DATA = Path(__file__).resolve().parents[2] / "data" / "audit"
CLUSTER_DATA = DATA / "cluster"


def rel(source: str) -> str:
    """A finding's source relative to the corpus (files), or as-is (cluster, stdin)."""
    path = Path(source)
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        return path.resolve().relative_to(DATA).as_posix()
    except ValueError:
        return source


def row(f: Finding) -> tuple[str, str, str, str, int | None]:
    """(rule, object, field, file, line): what the corpus tests assert exactly."""
    return (f.rule_id, str(f.object), f.field, rel(f.location.source), f.location.line)


def audit_paths(*paths: str | Path, ignore: Iterable[str] = ()) -> AuditResult:
    loader = ManifestLoader()
    manifests = loader.load_paths([str(DATA / p) for p in paths])
    return audit(manifests, ignore=ignore, warnings=loader.warnings)


class RecordedApi:
    """Stands in for one typed API object (CoreV1Api, AppsV1Api, ...).

    Each call is first bound to the real method's signature (so a wrong argument name
    fails here as it would against a server), then answered from a recorded response
    file ``<method>[.<group>.<plural>][.<continue token>].json``. Typed responses are
    deserialized with the client's own ``ApiClient.deserialize`` into its models; custom
    objects stay dicts, as the real ``CustomObjectsApi`` returns them. Missing files
    answer 404; methods named in ``failing`` answer with the given HTTP status.
    """

    def __init__(
        self,
        real: type,
        directory: Path,
        api_client: Any,
        failing: Mapping[str, int] | None = None,
    ) -> None:
        self._real = real
        self._dir = directory
        self._client = api_client
        self._failing = dict(failing or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        signature = inspect.signature(getattr(self._real, method))

        def call(*args: Any, **kwargs: Any) -> Any:
            signature.bind(None, *args, **kwargs)
            self.calls.append((method, kwargs))
            if method in self._failing:
                status = self._failing[method]
                raise ApiException(status=status, reason=HTTPStatus(status).phrase)
            parts = [method]
            if args:  # list_cluster_custom_object(group, version, plural)
                parts += [args[0], args[2]]
            if kwargs.get("_continue"):
                parts.append(kwargs["_continue"])
            path = self._dir / (".".join(parts) + ".json")
            if not path.exists():
                raise ApiException(status=404, reason="Not Found")
            returns = signature.return_annotation
            if returns is object:
                return json.loads(path.read_text())
            return self._client.deserialize(path.read_text(), returns.__name__, "application/json")

        return call


def recorded_reader(
    directory: Path = CLUSTER_DATA, failing: Mapping[str, int] | None = None
) -> ClusterReader:
    api_client = client.ApiClient()
    apis = Apis(
        *(
            RecordedApi(real, directory, api_client, failing)
            for real in (
                client.CoreV1Api,
                client.AppsV1Api,
                client.BatchV1Api,
                client.StorageV1Api,
                client.CustomObjectsApi,
            )
        )
    )
    return ClusterReader(apis, api_client, source="cluster:recorded")
