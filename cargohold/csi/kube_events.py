"""The Kubernetes side of PVC events (``csi/pvc_events.py``): the ``EventSink`` that reads a
PVC's uid and creates and patches core/v1 Events with the official ``kubernetes`` client.

The only module of the CSI driver that imports ``kubernetes``. Credentials: in a pod, its
service account (``load_incluster_config``); elsewhere ``$KUBECONFIG`` or ~/.kube/config.
RBAC (deploy/base/rbac.yaml, ClusterRole ``cargohold-csi-controller``): ``get`` on
persistentvolumeclaims, ``create`` and ``patch`` on events. Called by ``csi/server.py``.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from cargohold.csi.pvc_events import EventGone, KubeUnavailable, PvcGone
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    ConfigError,
    InvalidArgument,
    PermissionDenied,
)


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)[:300]
    except (ValueError, AttributeError):
        return str(e.reason)


def refused(e: ApiException, gone: type[CargoholdError], what: str) -> CargoholdError:
    """The error of the tree for an API server's answer: ``gone`` for 404 and for a
    namespace being deleted; PermissionDenied 403; AlreadyExists 409; InvalidArgument
    other 4xx; KubeUnavailable 5xx and 429 (retried)."""
    msg = f"{what}: {e.status} {_message(e)}"
    if e.status == 404 or (e.status == 403 and "NamespaceTerminating" in str(e.body)):
        return gone(msg)
    if e.status == 403:
        return PermissionDenied(msg)
    if e.status == 409:
        return AlreadyExists(msg)
    if e.status is not None and 400 <= e.status < 500 and e.status != 429:
        return InvalidArgument(msg)
    return KubeUnavailable(msg)


class KubeEventSink:
    """``EventSink`` over a CoreV1Api; ``connect()`` finds the credentials."""

    def __init__(self, api: Any, timeout: float = 10.0) -> None:
        # urllib3's connection errors pass through: the loop logs them and retries
        self.api, self.timeout = api, timeout

    @classmethod
    def connect(cls, timeout: float = 10.0) -> KubeEventSink:
        """In-cluster credentials, else the kubeconfig; ConfigError when there are none."""
        try:
            config.load_incluster_config()
        except ConfigException:
            try:
                config.load_kube_config()
            except (ConfigException, OSError) as e:
                raise ConfigError(
                    f"no Kubernetes credentials (not in a pod, no usable kubeconfig: {e})"
                ) from None
        return cls(client.CoreV1Api(), timeout)

    def pvc_uid(self, namespace: str, name: str) -> str:
        try:
            pvc = self.api.read_namespaced_persistent_volume_claim(
                name, namespace, _request_timeout=self.timeout
            )
        except ApiException as e:
            raise refused(e, PvcGone, f"PVC {namespace}/{name}") from None
        return str(pvc.metadata.uid)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.api.create_namespaced_event(namespace, body, _request_timeout=self.timeout)
        except ApiException as e:  # 404: the namespace is gone, and the PVC with it
            raise refused(e, PvcGone, f"event {namespace}/{body['metadata']['name']}") from None

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        try:
            self.api.patch_namespaced_event(name, namespace, body, _request_timeout=self.timeout)
        except ApiException as e:
            raise refused(e, EventGone, f"event {namespace}/{name}") from None
