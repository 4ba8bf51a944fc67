"""deploy/examples/group-snapshots renders: the base plus the csi-snapshotter's
CSIVolumeGroupSnapshot gate (on that container, whatever its index), the RBAC it needs bound
to the controller's service account, and a VolumeGroupSnapshotClass of our driver."""

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
