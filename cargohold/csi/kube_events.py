"""The Kubernetes side of PVC events (``csi/pvc_events.py``): the ``EventSink`` that reads a
PVC's uid and creates and patches core/v1 Events with the official ``kubernetes`` client.

The only module of the CSI driver that imports ``kubernetes``. Credentials: in a pod, its
service account (``load_incluster_config``); elsewhere ``$KUBECONFIG`` or ~/.kube/config.
RBAC (deploy/base/rbac.yaml, ClusterRole ``cargohold-csi-controller``): ``get`` on
persistentvolumeclaims, ``create`` and ``patch`` on events. Called by ``csi/server.py``.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from cargohold.csi.pvc_events import EventGone, PvcGone
from cargohold.errors import AlreadyExists, ConfigError


class KubeEventSink:
    """``EventSink`` over a CoreV1Api; ``connect()`` finds the credentials."""

    def __init__(self, api: Any, timeout: float = 10.0) -> None:
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
            if e.status == 404:
                raise PvcGone(f"{namespace}/{name}") from None
            raise
        return str(pvc.metadata.uid)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.api.create_namespaced_event(namespace, body, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 409:
                raise AlreadyExists(f"event {body['metadata']['name']} exists") from None
            if e.status == 404:  # the namespace is gone, and the PVC with it
                raise PvcGone(namespace) from None
            raise

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        try:
            self.api.patch_namespaced_event(name, namespace, body, _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 404:
                raise EventGone(f"{namespace}/{name}") from None
            raise
