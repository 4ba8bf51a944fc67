"""The security of deploy/ (issue #16): every component mounts its certificates from the
Secrets ``cargohold ca kube-secrets`` makes, read-only; only the manager holds the CA;
etcd speaks https with client certificates on both ports; NetworkPolicies deny ingress
unless needed; containers run with the least privilege they can (an allow-list: a new
root or privileged container fails here until someone says why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cargohold.security import etcd as etcd_tls
from cargohold.security import kube_secrets as ks
from cargohold.security.ca import CertificateAuthority
from tests.support.manifests import render

OVERLAYS = ["base", "ha"]
PRIVILEGED = {("cargohold-node", "csi-node")}  # mounts, devices: the comment in node.yaml
ROOT = {  # uid 0 with every capability dropped: root-owned host paths or sockets
    ("cargohold-node", "agent"),
    ("cargohold-node", "csi-node"),
    ("cargohold-node", "node-driver-registrar"),
    ("cargohold-node", "liveness-probe"),
    ("cargohold-manager", "state-owner"),  # chown of the hostPath, CAP_CHOWN only
    ("cargohold-etcd", "etcd"),
}
ADDED_CAPABILITIES = {("cargohold-manager", "state-owner"): ["CHOWN"]}
NO_API = {"cargohold-manager", "cargohold-etcd"}  # pods without a service account token


def pods(overlay: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in render(overlay)
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    }


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def effective(pod: dict[str, Any], c: dict[str, Any], key: str) -> Any:
    """A security setting of container ``c``, else of its pod."""
    return c.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_least_privilege(overlay: str) -> None:
    for name, pod in pods(overlay).items():
        assert effective(pod, {}, "seccompProfile") == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken", True) is (name not in NO_API), name
        for c in containers(pod):
            who = (name, c["name"])
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, who
            assert bool(sc.get("privileged")) is (who in PRIVILEGED), who
            if who in PRIVILEGED:
                continue
            assert sc.get("allowPrivilegeEscalation") is False, who
            caps = sc.get("capabilities", {})
            assert caps.get("drop") == ["ALL"], who
            assert caps.get("add", []) == ADDED_CAPABILITIES.get(who, []), who
            uid = effective(pod, c, "runAsUser")
            if who in ROOT:
                assert uid == 0 and effective(pod, c, "runAsNonRoot") is False, who
            else:
                assert uid and uid != 0 and effective(pod, c, "runAsNonRoot") is True, who


def secret_mounts(pod: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """mount path -> Secret name, for the Secret volumes ``c`` mounts (all read-only)."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    out = {}
    for m in c.get("volumeMounts", []):
        if m["name"] in secrets:
            assert m.get("readOnly") is True, (c["name"], m)
            out[m["mountPath"]] = secrets[m["name"]]
    return out


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_gets_its_certificates_from_a_secret(overlay: str) -> None:
    p = pods(overlay)
    wanted = {
        ("cargohold-manager", "manager"): ks.MANAGER_SECRET,
        ("cargohold-csi-controller", "csi-controller"): ks.CSI_SECRET,
        ("cargohold-node", "csi-node"): ks.CSI_SECRET,
    }
    for (pod, container), secret in wanted.items():
        c = next(c for c in p[pod]["containers"] if c["name"] == container)
        mounts = secret_mounts(p[pod], c)
        assert mounts[env(c)["CARGOHOLD_TLS_DIR"]] == secret, (pod, container)
    # the agent enrols: join token and trust from Secrets, its own certificate on its node
    agent = next(c for c in p["cargohold-node"]["containers"] if c["name"] == "agent")
    mounts, e = secret_mounts(p["cargohold-node"], agent), env(agent)
    assert mounts[str(Path(e["CARGOHOLD_JOIN_TOKEN_FILE"]).parent)] == ks.JOIN_TOKEN_SECRET
    assert mounts[e["CARGOHOLD_TRUST_DIR"]] == ks.TRUST_SECRET
    data = next(m for m in agent["volumeMounts"] if m["name"] == "data")["mountPath"]
    assert e["CARGOHOLD_TLS_DIR"].startswith(data + "/")
    # every client of the manager speaks https to it
    for name, spec in p.items():
        for c in spec["containers"]:
            text = " ".join(c.get("args", []))
            assert "http://cargohold-manager" not in text, (name, c["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_manager_holds_the_ca(overlay: str) -> None:
    holders = set()
    for name, pod in pods(overlay).items():
        for c in containers(pod):
            if ks.CA_SECRET in secret_mounts(pod, c).values():
                holders.add((name, c["name"]))
    assert holders == {("cargohold-manager", "manager")}
    mgr = next(c for c in pods(overlay)["cargohold-manager"]["containers"])
    ca_dir = env(mgr)["CARGOHOLD_CA_DIR"]
    assert secret_mounts(pods(overlay)["cargohold-manager"], mgr)[ca_dir] == ks.CA_SECRET


def test_etcd_speaks_https_with_client_certificates() -> None:
    p = pods("ha")
    (etcd,) = p["cargohold-etcd"]["containers"]
    mounts = secret_mounts(p["cargohold-etcd"], etcd)
    (tls_dir,) = [path for path, s in mounts.items() if s == ks.ETCD_SECRET]
    args = etcd["args"]
    assert set(etcd_tls.server_flags(tls_dir)) <= set(args)  # what the tests' etcd runs
    urls = [a.split("=", 1)[1] for a in args if "-urls=" in a or a.startswith("--initial-c")]
    assert urls and all("http://" not in u for u in urls)
    mgr = next(c for c in p["cargohold-manager"]["containers"] if c["name"] == "manager")
    state = mgr["args"][mgr["args"].index("--state") + 1]
    endpoints = state.removeprefix("etcd:").split(",")
    assert len(endpoints) == 3 and all(e.startswith("https://") for e in endpoints)
    client_dir = mgr["args"][mgr["args"].index("--etcd-tls-dir") + 1]
    assert secret_mounts(p["cargohold-manager"], mgr)[client_dir] == ks.ETCD_CLIENT_SECRET


def test_the_secrets_mounted_are_the_ones_the_bootstrap_makes(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", "c-deploy")
    made = {d["metadata"]["name"] for d in ks.kube_secrets(ca, "cargohold-system")}
    mounted = set()
    for overlay in OVERLAYS:
        for pod in pods(overlay).values():
            mounted |= {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert mounted == made | {ks.JOIN_TOKEN_SECRET}
    # and the names the etcd member certificate carries are the ones the peers dial
    dialled = {
        u.split("://", 1)[1].rsplit(":", 1)[0]
        for a in next(iter(pods("ha")["cargohold-etcd"]["containers"]))["args"]
        if a.startswith("--initial-cluster=")
        for u in a.split("=", 1)[1].split(",")
    }
    assert dialled <= set(ks.etcd_member_hosts("cargohold-system", 3))


def policies(overlay: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"] for d in render(overlay) if d["kind"] == "NetworkPolicy"
    }


def admitted(spec: dict[str, Any]) -> dict[int, list[Any]]:
    """port -> the peers (``from`` lists) a policy admits to it."""
    out: dict[int, list[Any]] = {}
    for rule in spec.get("ingress", []):
        for port in rule.get("ports", []):
            out.setdefault(port["port"], []).append(rule.get("from"))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_what_is_needed(overlay: str) -> None:
    pol = policies(overlay)
    deny = pol["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert not deny.get("ingress")
    mgr = pol["cargohold-manager"]
    assert mgr["podSelector"] == {"matchLabels": {"app": "cargohold-manager"}}
    assert admitted(mgr) == {9600: [None]}  # the API port only (it authenticates itself)
    if overlay == "ha":
        etcd = pol["cargohold-etcd"]
        assert etcd["podSelector"] == {"matchLabels": {"app": "cargohold-etcd"}}
        assert admitted(etcd) == {
            2379: [[{"podSelector": {"matchLabels": {"app": "cargohold-manager"}}}]],
            2380: [[{"podSelector": {"matchLabels": {"app": "cargohold-etcd"}}}]],
        }
    else:
        assert "cargohold-etcd" not in pol
    # every policy selects pods that exist (a renamed label would silently admit nothing)
    labels = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in render(overlay)
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    ]
    for name, spec in pol.items():
        want = spec["podSelector"].get("matchLabels", {})
        assert any(want.items() <= lab.items() for lab in labels), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_first_manager_makes_the_cluster_under_the_cas_id(overlay: str) -> None:
    """The bootstrap configmap carries init and the CA's cluster id (docs/kubernetes.md,
    step 4): the certificates the CA signed name the cluster the manager makes."""
    mgr = next(c for c in pods(overlay)["cargohold-manager"]["containers"])
    refs = {
        e["name"]: e["valueFrom"]["configMapKeyRef"]
        for e in mgr["env"]
        if "configMapKeyRef" in e.get("valueFrom", {})
    }
    assert refs["CARGOHOLD_MANAGER_INIT"] == {
        "name": "cargohold-bootstrap", "key": "init", "optional": True,
    }  # fmt: skip
    assert refs["CARGOHOLD_MANAGER_CLUSTER_ID"] == {
        "name": "cargohold-bootstrap", "key": "cluster-id", "optional": True,
    }  # fmt: skip
    from typer.main import get_command

    from cargohold.cli.main import app

    params = {p.name: p for p in get_command(app).commands["manager"].params}  # type: ignore[attr-defined]
    assert params["cluster_id"].envvar == "CARGOHOLD_MANAGER_CLUSTER_ID"
    assert params["init"].envvar == "CARGOHOLD_MANAGER_INIT"
