"""What the auditor knows about the outside world, as data: provisioners, images, labels.

The checks (``checks/``), ``workloads`` and ``matrix`` ask these tables and helpers
questions such as "is this provisioner zonal?", "does this image run a database?" or "is
this object marked sensitive?". Extending the auditor to a new driver or database is an
edit here, not in the checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# --- annotations the auditor reads ---------------------------------------------------

IGNORE_ANNOTATION = "audit.cargohold.io/ignore"
"""Comma-separated rule ids (or ``all``) to suppress on an object, its pod template or all
objects of a Namespace."""

CLEANUP_ANNOTATION_NAMES = frozenset({"cleanup-policy", "retention-policy"})
"""Any annotation ``<prefix>/cleanup-policy`` or ``<prefix>/retention-policy`` on a Retain
StorageClass documents how released volumes are cleaned up (e.g.
``audit.cargohold.io/cleanup-policy: "runbook: https://..."``)."""

DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")

# --- provisioners and CSI drivers ---------------------------------------------------

TOPOLOGY_AWARE_PROVISIONERS = frozenset(
    {
        "ebs.csi.aws.com",
        "kubernetes.io/aws-ebs",
        "pd.csi.storage.gke.io",
        "kubernetes.io/gce-pd",
        "disk.csi.azure.com",
        "kubernetes.io/azure-disk",
        "cinder.csi.openstack.org",
        "kubernetes.io/cinder",
        "csi.vsphere.vmware.com",
        "diskplugin.csi.alibabacloud.com",
        "disk.csi.cloud.ovh.net",
        "csi.cargohold.io",
        "rbd.csi.ceph.com",
        "driver.longhorn.io",
        "kubernetes.io/no-provisioner",
        "rancher.io/local-path",
        "local.csi.openebs.io",
        "topolvm.io",
        "lvm.csi.metal-stack.io",
    }
)
"""Provisioners whose volumes are bound to a zone or a node; they need WaitForFirstConsumer."""

TOPOLOGY_AWARE_SUFFIXES = (".rbd.csi.ceph.com", ".csi.cargohold.io")
"""Operator-prefixed driver names, e.g. ``rook-ceph.rbd.csi.ceph.com``."""

IN_TREE_TO_CSI = {
    "kubernetes.io/aws-ebs": "ebs.csi.aws.com",
    "kubernetes.io/gce-pd": "pd.csi.storage.gke.io",
    "kubernetes.io/azure-disk": "disk.csi.azure.com",
    "kubernetes.io/azure-file": "file.csi.azure.com",
    "kubernetes.io/cinder": "cinder.csi.openstack.org",
    "kubernetes.io/vsphere-volume": "csi.vsphere.vmware.com",
}
"""In-tree provisioners migrated to CSI: snapshots go through the CSI driver name."""

NO_SNAPSHOT_PROVISIONERS = frozenset(
    {
        "kubernetes.io/no-provisioner",
        "rancher.io/local-path",
        "k8s.io/minikube-hostpath",
        "docker.io/hostpath",
        "microk8s.io/hostpath",
        "nfs.csi.k8s.io",
    }
)
"""Provisioners that cannot take CSI snapshots; CH005 stays quiet for them."""

NO_EXPANSION_PROVISIONERS = frozenset(
    {
        "kubernetes.io/no-provisioner",
        "rancher.io/local-path",
        "k8s.io/minikube-hostpath",
        "docker.io/hostpath",
        "microk8s.io/hostpath",
    }
)
"""Provisioners that cannot grow a volume; CH008 stays quiet for them."""

ENCRYPTED_AT_REST_BY_DEFAULT = frozenset(
    {
        "pd.csi.storage.gke.io",
        "kubernetes.io/gce-pd",
        "disk.csi.azure.com",
        "kubernetes.io/azure-disk",
        "file.csi.azure.com",
        "kubernetes.io/azure-file",
    }
)
"""Clouds that always encrypt these volumes at rest; CH013 stays quiet for them."""

ENCRYPTION_PARAMETER = re.compile(r"encrypt|kms", re.IGNORECASE)
FALSE_VALUES = frozenset({"", "false", "0", "no", "off", "none"})
TRUE_VALUES = frozenset({"true", "yes", "1", "on", "y"})


def is_topology_aware(provisioner: str) -> bool:
    return provisioner in TOPOLOGY_AWARE_PROVISIONERS or provisioner.endswith(
        TOPOLOGY_AWARE_SUFFIXES
    )


def csi_driver(provisioner: str) -> str:
    """The CSI driver that serves a provisioner (in-tree names map to their CSI twin)."""
    return IN_TREE_TO_CSI.get(provisioner, provisioner)


def has_encryption(parameters: Mapping[str, object]) -> bool:
    """True when StorageClass parameters turn encryption on: any key that mentions
    ``encrypt`` or ``kms`` (``encrypted: "true"``, ``kmsKeyId``, ``disk-encryption-kms-key``)
    with a value other than false/empty."""
    for key, value in parameters.items():
        if ENCRYPTION_PARAMETER.search(str(key)) and str(value).strip().lower() not in FALSE_VALUES:
            return True
    return False


# --- images and labels --------------------------------------------------------------

RELATIONAL_TOKENS = frozenset(
    {
        "postgres",
        "postgresql",
        "postgis",
        "timescaledb",
        "mysql",
        "mariadb",
        "percona",
        "cockroach",
        "cockroachdb",
        "yugabyte",
        "yugabytedb",
        "tidb",
        "mssql",
        "oracle",
    }
)
DATASTORE_TOKENS = frozenset(
    {
        "mongo",
        "mongodb",
        "redis",
        "valkey",
        "keydb",
        "etcd",
        "elasticsearch",
        "opensearch",
        "cassandra",
        "scylla",
        "scylladb",
        "couchdb",
        "couchbase",
        "neo4j",
        "influxdb",
        "clickhouse",
        "minio",
        "database",
        "db",
    }
)
QUEUE_TOKENS = frozenset(
    {"kafka", "rabbitmq", "zookeeper", "pulsar", "nats", "activemq", "redpanda", "bookkeeper"}
)
DATABASE_TOKENS = RELATIONAL_TOKENS | DATASTORE_TOKENS | QUEUE_TOKENS
"""Any of these in an image name or an app label means: a database-like workload."""

NOT_A_SERVER_TOKENS = frozenset({"exporter", "operator", "client", "cli", "backup", "tools"})
"""Images such as ``postgres-exporter`` talk to a database; they are not one."""

STATIC_WEB_TOKENS = frozenset({"nginx", "httpd", "apache", "caddy", "lighttpd", "haproxy"})
ML_TOKENS = frozenset(
    {"pytorch", "tensorflow", "jupyter", "notebook", "ray", "training", "trainer", "kubeflow"}
)
LOG_SHIPPER_TOKENS = frozenset(
    {"fluentd", "fluent", "fluentbit", "vector", "logstash", "promtail", "filebeat", "alloy"}
)
BUILD_CACHE_TOKENS = frozenset({"buildkit", "buildkitd", "kaniko", "sccache", "ccache", "cache"})

APP_LABEL_KEYS = (
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "component",
    "tier",
    "role",
)

CSI_SIDECARS = frozenset(
    {
        "csi-provisioner",
        "csi-attacher",
        "csi-resizer",
        "csi-snapshotter",
        "csi-node-driver-registrar",
        "csi-external-health-monitor-controller",
        "livenessprobe",
        "snapshot-controller",
        "external-provisioner",
        "external-attacher",
        "external-resizer",
        "external-snapshotter",
        "node-driver-registrar",
    }
)
"""Images (or container names) of the CSI sidecars, upstream and EKS-distro spellings."""
CSI_LABEL_KEYS = (
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "component",
    "role",
)


def image_name(image: str) -> str:
    """``registry.k8s.io/sig-storage/csi-provisioner:v3.6.0@sha256:..`` -> ``csi-provisioner``."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0].lower()


def tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^a-z0-9]+", text.lower()) if t}


def image_tokens(image: str) -> set[str]:
    """Tokens of an image's name, or none for helper images (exporters, operators...)."""
    found = tokens(image_name(image))
    return set() if found & NOT_A_SERVER_TOKENS else found


def label_tokens(labels: Mapping[str, str]) -> set[str]:
    return set().union(*(tokens(labels[k]) for k in APP_LABEL_KEYS if k in labels))


def is_csi_container(container: Mapping[str, object]) -> bool:
    image = image_name(str(container.get("image") or ""))
    name = str(container.get("name") or "").lower()
    return image in CSI_SIDECARS or image.startswith("csi-") or name in CSI_SIDECARS


def has_csi_label(labels: Mapping[str, str]) -> bool:
    return any("csi" in tokens(labels[k]) for k in CSI_LABEL_KEYS if k in labels)


# --- markers on objects ---------------------------------------------------------------

SENSITIVE_FLAG_NAMES = frozenset({"sensitive", "sensitive-data", "contains-pii", "pii"})
SENSITIVE_CLASS_NAMES = frozenset(
    {
        "data-classification",
        "data.classification",
        "dataclassification",
        "classification",
        "data-sensitivity",
        "sensitivity",
    }
)
SENSITIVE_CLASS_VALUES = frozenset(
    {"confidential", "restricted", "sensitive", "secret", "pii", "phi", "pci", "high"}
)


def sensitive_marker(*maps: Mapping[str, str]) -> str | None:
    """The first label or annotation that marks data as sensitive, as ``key=value``.

    Recognised: ``<any prefix>/sensitive: "true"`` (also ``sensitive-data``, ``pii``...) and
    ``<any prefix>/data-classification: confidential`` (or restricted, secret, pii, ...).
    """
    for mapping in maps:
        for key, value in mapping.items():
            name = key.rsplit("/", 1)[-1].lower()
            val = value.strip().lower()
            if name in SENSITIVE_FLAG_NAMES and val in TRUE_VALUES:
                return f"{key}={value}"
            if name in SENSITIVE_CLASS_NAMES and val in SENSITIVE_CLASS_VALUES:
                return f"{key}={value}"
    return None


def has_cleanup_note(annotations: Mapping[str, str]) -> bool:
    return any(
        key.rsplit("/", 1)[-1] in CLEANUP_ANNOTATION_NAMES and value.strip()
        for key, value in annotations.items()
    )


def parse_rule_list(text: str) -> set[str]:
    """``"CH003, ch004"`` -> ``{"CH003", "CH004"}``; ``all`` and ``*`` stay as ``"ALL"``."""
    out = {part.strip().upper() for part in re.split(r"[,\s]+", text) if part.strip()}
    return {"ALL" if part == "*" else part for part in out}
