"""The kustomize manifests under deploy/ render (``kubectl kustomize``) and every object is
valid against the Kubernetes schemas (kubernetes-validate); the CSI pieces are wired up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32"
# CRDs of the external-snapshotter: not in the core schemas
NO_SCHEMA = {("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")}


def render(overlay: str) -> list[dict]:
    if not shutil.which("kubectl"):
        pytest.skip("needs kubectl (kustomize)")
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


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
