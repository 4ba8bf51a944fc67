"""Reads a live cluster for the auditor, read-only, through the official kubernetes client.

Called by ``cargohold.cli.audit_cmd`` for ``--kubeconfig``, ``--context`` or ``--cluster``.
This is the only module that imports ``kubernetes``. It only lists (GET) objects: the
storage classes, snapshot classes, nodes, namespaces, claims and every pod-bearing kind,
plus a few snapshot-schedule custom resources when their CRDs exist. Each object becomes a
``Manifest`` shaped exactly like the API's JSON (``apiVersion``/``kind`` restored, which
list items lack), so the checks cannot tell a cluster object from a file.

Missing CRDs (404) are skipped quietly; forbidden lists (403) become warnings; an
unreachable API server or rejected credentials raise ``ClusterError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from cargohold.audit.errors import ClusterError
from cargohold.audit.manifest import Manifest
from cargohold.audit.settings import AuditSettings


@dataclass(frozen=True)
class Listing:
    """One list call: which API object, which method, and the kind of its items."""

    api: str
    method: str
    kind: str
    api_version: str


LISTINGS: tuple[Listing, ...] = (
    Listing("core", "list_namespace", "Namespace", "v1"),
    Listing("core", "list_node", "Node", "v1"),
    Listing("storage", "list_storage_class", "StorageClass", "storage.k8s.io/v1"),
    Listing(
        "core", "list_persistent_volume_claim_for_all_namespaces", "PersistentVolumeClaim", "v1"
    ),
    Listing("core", "list_pod_for_all_namespaces", "Pod", "v1"),
    Listing(
        "core", "list_replication_controller_for_all_namespaces", "ReplicationController", "v1"
    ),
    Listing("apps", "list_deployment_for_all_namespaces", "Deployment", "apps/v1"),
    Listing("apps", "list_stateful_set_for_all_namespaces", "StatefulSet", "apps/v1"),
    Listing("apps", "list_daemon_set_for_all_namespaces", "DaemonSet", "apps/v1"),
    Listing("apps", "list_replica_set_for_all_namespaces", "ReplicaSet", "apps/v1"),
    Listing("batch", "list_job_for_all_namespaces", "Job", "batch/v1"),
    Listing("batch", "list_cron_job_for_all_namespaces", "CronJob", "batch/v1"),
)


@dataclass(frozen=True)
class CustomListing:
    """A custom resource listed cluster-wide when its CRD is installed."""

    group: str
    version: str
    plural: str
    kind: str


CUSTOM_LISTINGS: tuple[CustomListing, ...] = (
    CustomListing("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses", "VolumeSnapshotClass"),
    CustomListing("snapscheduler.backube", "v1", "snapshotschedules", "SnapshotSchedule"),
    CustomListing("velero.io", "v1", "schedules", "Schedule"),
    CustomListing("longhorn.io", "v1beta2", "recurringjobs", "RecurringJob"),
)


@dataclass(frozen=True)
class Apis:
    """The typed API objects the reader calls; tests pass fakes with the same methods."""

    core: Any
    apps: Any
    batch: Any
    storage: Any
    custom: Any

    @classmethod
    def of(cls, api_client: Any) -> Apis:
        return cls(
            core=client.CoreV1Api(api_client),
            apps=client.AppsV1Api(api_client),
            batch=client.BatchV1Api(api_client),
            storage=client.StorageV1Api(api_client),
            custom=client.CustomObjectsApi(api_client),
        )


class ClusterReader:
    """Lists the objects the auditor needs. ``read()`` returns them with warnings."""

    def __init__(
        self,
        apis: Apis,
        serializer: Any,
        source: str,
        settings: AuditSettings | None = None,
    ) -> None:
        self._apis = apis
        self._serializer = serializer
        self._settings = settings or AuditSettings()
        self.source = source
        self.warnings: list[str] = []

    def read(self) -> list[Manifest]:
        manifests: list[Manifest] = []
        for listing in LISTINGS:
            fn = getattr(getattr(self._apis, listing.api), listing.method)
            items = self._list(fn, listing.kind, optional=False)
            manifests += self._manifests(items, listing.kind, listing.api_version)
        for custom in CUSTOM_LISTINGS:
            fn = functools.partial(
                self._apis.custom.list_cluster_custom_object,
                custom.group,
                custom.version,
                custom.plural,
            )
            items = self._list(fn, custom.kind, optional=True)
            manifests += self._manifests(items, custom.kind, f"{custom.group}/{custom.version}")
        return manifests

    def _list(self, fn: Callable[..., Any], kind: str, *, optional: bool) -> list[dict]:
        items: list[dict] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": self._settings.page_size,
                "_request_timeout": self._settings.request_timeout_seconds,
            }
            if token:
                kwargs["_continue"] = token
            try:
                response = fn(**kwargs)
            except ApiException as exc:
                return self._failed(exc, kind, optional)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ClusterError(f"{self.source}: cannot reach the API server: {exc}") from None
            except ValueError as exc:  # the typed client could not decode the answer
                self.warnings.append(f"{self.source}: cannot decode the {kind} list: {exc}")
                return items
            data = response if isinstance(response, dict) else self._serialize(response)
            items += [i for i in data.get("items") or [] if isinstance(i, dict)]
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                return items

    def _serialize(self, response: Any) -> dict:
        data = self._serializer.sanitize_for_serialization(response)
        return data if isinstance(data, dict) else {}

    def _failed(self, exc: ApiException, kind: str, optional: bool) -> list[dict]:
        if exc.status == 401:
            raise ClusterError(f"{self.source}: the API server rejected the credentials (401)")
        if exc.status == 404 and optional:
            return []
        self.warnings.append(
            f"{self.source}: cannot list {kind} ({exc.status} {exc.reason}); "
            f"rules that need {kind} objects see none"
        )
        return []

    def _manifests(self, items: list[dict], kind: str, api_version: str) -> list[Manifest]:
        out = []
        for item in items:
            obj = {**item, "apiVersion": api_version, "kind": kind}
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                meta.pop("managedFields", None)
            out.append(Manifest(obj=obj, source=self.source, is_file=False, origin="cluster"))
        return out


def connect(
    kubeconfig: str | None = None,
    context: str | None = None,
    settings: AuditSettings | None = None,
) -> ClusterReader:
    """A reader for the cluster of ``context`` in ``kubeconfig`` (defaults: $KUBECONFIG or
    ~/.kube/config and its current context; in a pod, the service account)."""
    try:
        api_client = config.new_client_from_config(
            config_file=kubeconfig, context=context, persist_config=False
        )
        name = context or _current_context(kubeconfig) or "cluster"
    except (config.ConfigException, OSError, ValueError) as exc:
        if kubeconfig is not None or context is not None:
            raise ClusterError(f"cannot load kubeconfig: {exc}") from None
        api_client, name = _in_cluster(exc)
    return ClusterReader(Apis.of(api_client), api_client, f"cluster:{name}", settings)


def _current_context(kubeconfig: str | None) -> str | None:
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError, ValueError):
        return None
    return str(active.get("name")) if active else None


def _in_cluster(first_error: Exception) -> tuple[Any, str]:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        raise ClusterError(
            f"no kubeconfig found ({first_error}) and not running inside a cluster"
        ) from None
    return client.ApiClient(configuration), "in-cluster"
