"""deploy/examples/encrypted (docs/keys.md) renders and is valid: the manager mounts the
Secret of key-encryption keys and is told where (CARGOHOLD_MANAGER_KEY_DIR), the Secret's
placeholder is refused as a KEK (so an unedited example never encrypts with a known key),
and the StorageClass's parameters are ones the driver accepts."""

from __future__ import annotations

import kubernetes_validate
import pytest

from cargohold.csi.parameters import VolumeParameters
from cargohold.keys.data_keys import parse_kek
from tests.support.manifests import render


def test_the_encrypted_example() -> None:
    docs = render("examples/encrypted")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for key in (
        ("StorageClass", "cargohold-encrypted"),
        ("Secret", "cargohold-keks"),
        ("Deployment", "cargohold-manager"),
    ):
        kubernetes_validate.validate(by[key], "1.32", strict=True)
    sc = by[("StorageClass", "cargohold-encrypted")]
    p = VolumeParameters.parse(sc["parameters"])
    assert p.encrypted and p.key == "default" and p.kms_key is None
    secret = by[("Secret", "cargohold-keks")]
    assert secret["metadata"]["namespace"] == "cargohold-system"
    with pytest.raises(ValueError, match="not a key-encryption key"):
        parse_kek(secret["stringData"]["default"].encode(), "the example")
    pod = by[("Deployment", "cargohold-manager")]["spec"]["template"]["spec"]
    [mgr] = [c for c in pod["containers"] if c["name"] == "manager"]
    env = {e["name"]: e.get("value") for e in mgr["env"]}
    mounts = {m["name"]: m for m in mgr["volumeMounts"]}
    assert env["CARGOHOLD_MANAGER_KEY_DIR"] == mounts["keks"]["mountPath"]
    assert mounts["keks"]["readOnly"] is True
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["keks"]["secret"]["secretName"] == "cargohold-keks"
    # only the manager holds KEKs: no other pod mounts the Secret
    for (kind, name), d in by.items():
        if kind in ("DaemonSet", "Deployment", "StatefulSet") and name != "cargohold-manager":
            spec = d["spec"]["template"]["spec"]
            assert "cargohold-keks" not in str(spec.get("volumes", [])), name
