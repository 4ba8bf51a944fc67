"""Live-cluster mode against recorded API responses in the official client's shape.

The recorded responses (tests/data/audit/cluster/) go through ``RecordedApi``, which binds
each call to the real client method's signature and deserializes the JSON into the
client's typed models, so ``cluster.py`` runs exactly as against a server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_helpers import DATA, recorded_reader, row

from cargohold.audit import cluster
from cargohold.audit.cluster import ClusterReader
from cargohold.audit.engine import audit
from cargohold.audit.errors import ClusterError
from cargohold.audit.loader import ManifestLoader

SRC = "cluster:recorded"
EXPECTED = [
    ("CH001", "StorageClass gp2", "volumeBindingMode", SRC, None),
    ("CH002", "StorageClass gp2", "reclaimPolicy", SRC, None),
    ("CH006", "StatefulSet db/pg", "spec.volumeClaimTemplates[0].spec.accessModes", SRC, None),
    (
        "CH007",
        "Deployment kube-system/ebs-csi-controller",
        "spec.template.spec.containers[1].resources",
        SRC,
        None,
    ),
    ("CH008", "StorageClass gp2", "allowVolumeExpansion", SRC, None),
    ("CH010", "Pod default/debug", "spec.volumes[0].emptyDir", SRC, None),
    ("CH012", "VolumeSnapshotClass ebs-snapshots", "driver", SRC, None),
    ("CH013", "StorageClass gp2", "parameters", SRC, None),
]


def test_recorded_cluster_gives_exactly_these_findings(cluster_reader: ClusterReader) -> None:
    manifests = cluster_reader.read()
    result = audit(manifests, warnings=cluster_reader.warnings)
    assert sorted(row(f) for f in result.findings) == sorted(EXPECTED)
    assert all(not f.location.is_file for f in result.findings)
    assert result.warnings == (
        "cluster:recorded: cannot list ReplicationController (403 Forbidden); "
        "rules that need ReplicationController objects see none",
    )


def test_objects_come_back_in_api_shape_with_kind_restored(cluster_reader: ClusterReader) -> None:
    manifests = cluster_reader.read()
    kinds = sorted({m.kind for m in manifests})
    assert kinds == [
        "DaemonSet",
        "Deployment",
        "Namespace",
        "Node",
        "PersistentVolumeClaim",
        "Pod",
        "ReplicaSet",
        "StatefulSet",
        "StorageClass",
        "VolumeSnapshotClass",
    ]
    sts = next(m for m in manifests if m.kind == "StatefulSet")
    assert sts.api_version == "apps/v1"
    assert sts.get(("spec", "template", "spec", "securityContext", "fsGroup")) == 999
    assert sts.get(("spec", "volumeClaimTemplates", 0, "spec", "accessModes")) == ["ReadWriteOnce"]
    assert all("managedFields" not in m.metadata for m in manifests)


def test_owned_objects_are_folded_into_their_controllers(cluster_reader: ClusterReader) -> None:
    from cargohold.audit.inventory import Inventory

    inv = Inventory(cluster_reader.read())
    # pods of the StatefulSet, DaemonSet and ReplicaSet, and the ReplicaSet of the
    # Deployment are not audited twice; the bare debug pod is
    assert sorted(str(w) for w in inv.workloads) == [
        "DaemonSet kube-system/ebs-csi-node",
        "Deployment kube-system/ebs-csi-controller",
        "Pod default/debug",
        "StatefulSet db/pg",
    ]
    # data-pg-0 and data-pg-1 belong to the StatefulSet's template
    assert [c.describe() for c in inv.claims] == ["volumeClaimTemplate data of StatefulSet pg"]
    assert inv.zones == {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
    assert inv.default_class == "gp2"


def test_lists_are_paged_with_continue_tokens(cluster_reader: ClusterReader) -> None:
    cluster_reader.read()
    core = cluster_reader._apis.core
    pod_calls = [kw for method, kw in core.calls if method == "list_pod_for_all_namespaces"]
    assert len(pod_calls) == 2
    assert "_continue" not in pod_calls[0]
    assert pod_calls[1]["_continue"].startswith("eyJ2")
    assert all(kw["limit"] == 500 and kw["_request_timeout"] == 30 for _, kw in core.calls)


def test_missing_crds_are_skipped_quietly(tmp_path: Path) -> None:
    reader = recorded_reader(directory=tmp_path)  # every list answers 404
    assert reader.read() == []
    assert all("VolumeSnapshotClass" not in w for w in reader.warnings)
    assert any("cannot list StorageClass (404 Not Found)" in w for w in reader.warnings)


def test_rejected_credentials_are_an_error() -> None:
    reader = recorded_reader(failing={"list_namespace": 401})
    with pytest.raises(ClusterError, match="rejected the credentials"):
        reader.read()


def test_files_override_the_cluster_copy_of_the_same_object(
    cluster_reader: ClusterReader, tmp_path: Path
) -> None:
    fixed = (DATA / "cluster" / "fixed-pg.yaml").read_text()
    path = tmp_path / "pg.yaml"
    path.write_text(fixed)
    manifests = ManifestLoader().load_paths([str(path)]) + cluster_reader.read()
    rows = [row(f) for f in audit(manifests).findings]
    assert ("CH006", "StatefulSet db/pg") not in [(r[0], r[1]) for r in rows]
    assert ("CH001", "StorageClass gp2") in [(r[0], r[1]) for r in rows]


def test_connect_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot load kubeconfig"):
        cluster.connect(kubeconfig=str(tmp_path / "missing"))
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: local\n"
        "clusters:\n- name: local\n  cluster: {server: 'https://127.0.0.1:1'}\n"
        "contexts:\n- name: local\n  context: {cluster: local, user: me}\n"
        "users:\n- name: me\n  user: {token: t}\n"
    )
    with pytest.raises(ClusterError, match="cannot load kubeconfig"):
        cluster.connect(kubeconfig=str(kubeconfig), context="other")
    reader = cluster.connect(kubeconfig=str(kubeconfig))
    assert reader.source == "cluster:local"
    with pytest.raises(ClusterError, match="cluster:local: cannot reach the API server"):
        reader.read()


def test_an_answer_the_client_cannot_decode_is_a_warning(tmp_path: Path) -> None:
    bad = {
        "kind": "StatefulSetList",
        "apiVersion": "apps/v1",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": "x"},
                "spec": {"replicas": "three", "selector": {}, "template": {}},
            }
        ],
    }
    (tmp_path / "list_stateful_set_for_all_namespaces.json").write_text(json.dumps(bad))
    reader = recorded_reader(directory=tmp_path)
    assert reader.read() == []
    assert any("cannot decode the StatefulSet list" in w for w in reader.warnings)
