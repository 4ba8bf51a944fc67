"""deploy/'s upgrade story (docs/upgrades.md): the base replaces node pods only when they
are deleted (a rollout would stop every volume's I/O on the node), and the
in-place-upgrades overlay, which hands engines and nbdfuse to host systemd scopes, renders,
is valid and sets what the agent and the node plugin read."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from tests.support.manifests import render

K8S_VERSION = "1.32"


def node_daemonset(overlay: str) -> dict[str, Any]:
    return next(
        d
        for d in render(overlay)
        if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "cargohold-node"
    )


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_the_base_rolls_node_pods_only_when_deleted() -> None:
    assert node_daemonset("base")["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_the_in_place_overlay_hands_the_data_path_to_host_scopes() -> None:
    ds = node_daemonset("in-place-upgrades")
    kubernetes_validate.validate(ds, K8S_VERSION, strict=True)
    spec = ds["spec"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
    pod = spec["template"]["spec"]
    assert pod["hostPID"] is True
    containers = {c["name"]: c for c in pod["containers"]}
    agent, csi = env_of(containers["agent"]), env_of(containers["csi-node"])
    assert agent["CARGOHOLD_AGENT_HANDOVER"] == "true"
    for env in (agent, csi):
        prefix = env["CARGOHOLD_SPAWN_PREFIX"].split()
        assert prefix[:2] == ["systemd-run", "--scope"] and prefix[-1] == "--"
        assert "--slice=cargohold.slice" in prefix
        assert any(p.startswith("--property=MemoryMax=") for p in prefix)
    for name in ("agent", "csi-node"):
        mounts = {m["name"]: m["mountPath"] for m in containers[name]["volumeMounts"]}
        assert mounts["host-systemd"] == "/run/systemd"
        base = {m["name"] for m in next(
            c for c in node_daemonset("base")["spec"]["template"]["spec"]["containers"]
            if c["name"] == name
        )["volumeMounts"]}  # fmt: skip
        assert base <= set(mounts), "the patch must add to the base's mounts, not replace"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["host-systemd"]["hostPath"]["path"] == "/run/systemd"
    # every other object is the base's, unchanged
    others = [d for d in render("in-place-upgrades") if d["metadata"]["name"] != "cargohold-node"]
    assert others == [d for d in render("base") if d["metadata"]["name"] != "cargohold-node"]
