"""The kustomize manifests under deploy/ render (``kubectl kustomize``) and every object is
valid against the Kubernetes schemas (kubernetes-validate); the CSI pieces are wired up."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from tests.support.manifests import render

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32"
# CRDs of the external-snapshotter: not in the core schemas
NO_SCHEMA = {("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")}


@pytest.mark.parametrize("overlay", ["base", "ha"])
def test_every_object_is_valid(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
            assert doc["driver"] == "csi.cargohold.io"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["base", "ha"])
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for doc in render(overlay):
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for c in spec["containers"]:
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), (
                f"{doc['metadata']['name']}/{c['name']}"
            )


def test_csi_wiring() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    sc = docs[("StorageClass", "cargohold")]
    assert sc["provisioner"] == "csi.cargohold.io"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer" and sc["allowVolumeExpansion"]
    assert sc["reclaimPolicy"] == "Delete"
    from cargohold.csi.parameters import VolumeParameters

    VolumeParameters.parse(sc["parameters"])  # the default class's parameters are valid
    # external-provisioner v5 refuses both keys at once (k8s-lab, ProvisioningFailed)
    assert "fsType" not in sc["parameters"] or "csi.storage.k8s.io/fstype" not in sc["parameters"]
    assert docs[("CSIDriver", "csi.cargohold.io")]["spec"]["attachRequired"] is True
    ctl = docs[("Deployment", "cargohold-csi-controller")]["spec"]["template"]["spec"]
    names = {c["name"] for c in ctl["containers"]}
    assert {
        "csi-provisioner",
        "csi-attacher",
        "csi-snapshotter",
        "csi-resizer",
        "liveness-probe",
    } <= names
    prov = next(c for c in ctl["containers"] if c["name"] == "csi-provisioner")
    assert any("Topology=true" in a for a in prov["args"])
    node = docs[("DaemonSet", "cargohold-node")]["spec"]["template"]["spec"]
    by = {c["name"]: c for c in node["containers"]}
    assert {"agent", "csi-node", "node-driver-registrar", "liveness-probe"} <= set(by)
    assert by["csi-node"]["securityContext"]["privileged"]
    paths = {v["hostPath"]["path"] for v in node["volumes"] if "hostPath" in v}
    assert {"/dev", "/var/lib/kubelet"} <= paths
    kubelet = next(
        m for m in by["csi-node"]["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet"
    )
    assert kubelet["mountPropagation"] == "Bidirectional"


def test_the_agent_gets_its_nodes_zone() -> None:
    """The downward API has no node labels: an init container reads the zone label
    through the API (RBAC get nodes) into a file the agent's --zone comes from."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    pod = docs[("DaemonSet", "cargohold-node")]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][-1] == "cargohold.csi.node_zone"
    out = init["args"][init["args"].index("--out") + 1]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    script = " ".join(agent["args"])
    assert f'--zone "$$(cat {out})"' in script  # $$: not a Kubernetes $(VAR) reference
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert any(out.startswith(m + "/") for m in mounts)
    role = docs[("ClusterRole", "cargohold-node")]
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]} in role["rules"]
    binding = docs[("ClusterRoleBinding", "cargohold-node")]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    from cargohold.csi.node_zone import ZONE_LABELS

    assert ZONE_LABELS[0] == "topology.kubernetes.io/zone"


def test_the_node_plugin_has_a_liveness_probe_on_the_sidecars_port() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    pod = docs[("DaemonSet", "cargohold-node")]["spec"]["template"]["spec"]
    by = {c["name"]: c for c in pod["containers"]}
    port = next(
        int(a.split("=", 1)[1]) for a in by["liveness-probe"]["args"] if "--health-port" in a
    )
    node = by["csi-node"]
    named = {p["name"]: p["containerPort"] for p in node["ports"]}
    probe = node["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and named[probe["port"]] == port


def test_stateful_pieces_are_pinned() -> None:
    """SQLite in a hostPath: the manager runs on a labelled node (base only). etcd:
    members on distinct labelled nodes, each in a data directory of its own."""
    base = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    spec = base[("Deployment", "cargohold-manager")]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert spec["template"]["spec"]["nodeSelector"] == {"cargohold.io/manager": "true"}
    assert "hostPath" in spec["template"]["spec"]["volumes"][0]
    ha = {(d["kind"], d["metadata"]["name"]): d for d in render("ha")}
    mgr = ha[("Deployment", "cargohold-manager")]["spec"]["template"]["spec"]
    assert "nodeSelector" not in mgr and "emptyDir" in mgr["volumes"][0]
    etcd = ha[("StatefulSet", "cargohold-etcd")]["spec"]["template"]["spec"]
    assert etcd["nodeSelector"] == {"cargohold.io/etcd": "true"}
    (term,) = etcd["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {"app": "cargohold-etcd"}
    (c,) = etcd["containers"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "data")
    assert mount["subPathExpr"] == "$(POD_NAME)"
    assert any(e["name"] == "POD_NAME" for e in c["env"])
    data_dir = next(a for a in c["args"] if a.startswith("--data-dir="))
    assert data_dir.split("=", 1)[1].startswith(mount["mountPath"])


def test_the_controller_keeps_its_publications_in_a_volume() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    pod = docs[("Deployment", "cargohold-csi-controller")]["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "csi-controller")
    state = c["args"][c["args"].index("--state-dir") + 1]
    assert any(m["mountPath"] == state for m in c["volumeMounts"])


@pytest.mark.parametrize("overlay", ["base", "ha"])
def test_the_manager_probes_readiness_and_liveness_apart(overlay: str) -> None:
    """Readiness is /healthz (it reads the state store: 503 while it is unreachable or
    damaged); liveness is /livez (the process serves: a restart mends no broken disk).
    Both are routes of the manager's published API."""
    import json

    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(overlay)}
    pod = docs[("Deployment", "cargohold-manager")]["spec"]["template"]["spec"]
    mgr = next(c for c in pod["containers"] if c["name"] == "manager")
    named = {p["name"]: p["containerPort"] for p in mgr["ports"]}
    ready, live = mgr["readinessProbe"]["httpGet"], mgr["livenessProbe"]["httpGet"]
    assert ready["path"] == "/healthz" and live["path"] == "/livez"
    assert named[ready["port"]] == named[live["port"]] == 9600
    paths = json.loads((ROOT / "docs/api/openapi.json").read_text())["paths"]
    assert "get" in paths["/healthz"] and "get" in paths["/livez"]


def test_the_backup_snapshot_class_example_is_valid() -> None:
    """deploy/examples/backups: a VolumeSnapshotClass whose parameters the driver accepts
    as a backup (docs/kubernetes.md shows it)."""
    from cargohold.csi.parameters import SnapshotParameters

    [cls] = render("examples/backups")
    assert cls["kind"] == "VolumeSnapshotClass" and cls["driver"] == "csi.cargohold.io"
    assert cls["deletionPolicy"] in ("Retain", "Delete")
    assert SnapshotParameters.parse(cls["parameters"]).backup_target == "nfs"
    base = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    assert not SnapshotParameters.parse(
        base[("VolumeSnapshotClass", "cargohold")].get("parameters") or {}
    ).is_backup  # the default class stays an ordinary snapshot


@pytest.mark.parametrize("overlay", ["base", "ha", "examples/backups"])
def test_no_shipped_storage_class_names_the_filesystem_twice(overlay: str) -> None:
    """external-provisioner refuses a class with both fsType and csi.storage.k8s.io/fstype
    (found in a real cluster: make k8s-e2e provisions a PVC of every shipped class)."""
    for doc in render(overlay):
        if doc["kind"] == "StorageClass":
            params = doc.get("parameters") or {}
            assert not ("fsType" in params and "csi.storage.k8s.io/fstype" in params), doc


def test_the_namespace_admits_the_privileged_node_plugin_and_no_default_class() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render("base")}
    labels = docs[("Namespace", "cargohold-system")]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    # the default StorageClass is the cluster admin's explicit choice (docs/kubernetes.md)
    annotations = docs[("StorageClass", "cargohold")]["metadata"].get("annotations") or {}
    assert "storageclass.kubernetes.io/is-default-class" not in annotations


def test_the_qos_examples_are_valid() -> None:
    """deploy/examples/qos: a StorageClass and VolumeAttributesClasses whose parameters the
    driver accepts (docs/qos.md shows them); the resizer may read the classes."""
    from cargohold.csi.controller_modify import mutable_qos
    from cargohold.csi.parameters import VolumeParameters

    docs = render("examples/qos")
    [sc] = [d for d in docs if d["kind"] == "StorageClass"]
    assert VolumeParameters.parse(sc["parameters"]).qos == {
        "max_iops": 2000,
        "max_bandwidth": 100 << 20,
    }
    vacs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "VolumeAttributesClass"}
    assert set(vacs) == {"cargohold-silver", "cargohold-gold", "cargohold-unlimited"}
    for vac in vacs.values():
        assert vac["driverName"] == "csi.cargohold.io"
        mutable_qos(vac["parameters"])  # raises if the driver would refuse it
    assert mutable_qos(vacs["cargohold-unlimited"]["parameters"])["max_iops"] is None
    base = render("base")
    rules = [r for d in base if d["kind"] == "ClusterRole" for r in d.get("rules", ())]
    assert any("volumeattributesclasses" in r.get("resources", ()) for r in rules)
