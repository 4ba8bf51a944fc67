"""deploy/examples/ of issue 24 render and are valid: group-snapshots (the base plus the
csi-snapshotter's CSIVolumeGroupSnapshot gate on that container, whatever its index, the RBAC
it needs bound to the controller's service account, a VolumeGroupSnapshotClass) and static-pv."""

from __future__ import annotations

import kubernetes_validate

from tests.support.manifests import render


def test_the_group_snapshot_overlay() -> None:
    docs = render("examples/group-snapshots")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ctl = by[("Deployment", "cargohold-csi-controller")]["spec"]["template"]["spec"]
    gated = [
        c["name"]
        for c in ctl["containers"]
        if any("CSIVolumeGroupSnapshot=true" in a for a in c.get("args", []))
    ]
    assert gated == ["csi-snapshotter"]
    cls = by[("VolumeGroupSnapshotClass", "cargohold-group")]
    assert cls["apiVersion"] == "groupsnapshot.storage.k8s.io/v1beta1"
    assert cls["driver"] == "csi.cargohold.io" and cls["deletionPolicy"] == "Delete"
    role = by[("ClusterRole", "cargohold-csi-group-snapshots")]
    assert any("volumegroupsnapshotcontents/status" in r["resources"] for r in role["rules"])
    binding = by[("ClusterRoleBinding", "cargohold-csi-group-snapshots")]
    assert binding["subjects"][0]["name"] == ctl["serviceAccountName"]
    for d in (role, binding):
        kubernetes_validate.validate(d, "1.32", strict=True)


def test_the_static_pv_example() -> None:
    """deploy/examples/static-pv: a valid PV naming a cargohold volume, and its claim."""
    docs = render("examples/static-pv")
    by = {d["kind"]: d for d in docs}
    for d in docs:
        kubernetes_validate.validate(d, "1.32", strict=True)
    pv, pvc = by["PersistentVolume"]["spec"], by["PersistentVolumeClaim"]["spec"]
    assert pv["csi"]["driver"] == "csi.cargohold.io" and pv["csi"]["volumeHandle"] == "legacy-db"
    assert pvc["volumeName"] == by["PersistentVolume"]["metadata"]["name"]
    assert pvc["storageClassName"] == pv["storageClassName"] == "cargohold"
    assert pvc["resources"]["requests"]["storage"] == pv["capacity"]["storage"]
