"""cargohold in a real Kubernetes cluster, driven only through the Kubernetes API, as a user
would: ``make k8s-e2e`` against the cluster KUBECONFIG names, with the driver already
running there (deploy/, or the k8s-lab's host processes).

It applies what a user applies from deploy/ (the CSIDriver, the VolumeSnapshotClass, and
every shipped StorageClass, as copies named ``e2e-<name>-immediate`` / ``-wffc`` so that a
cluster's own classes are left alone), then: each shipped class provisions a PVC; a PVC
(Immediate) → a pod writing files → cargohold's events on the PVC → VolumeSnapshot → a PVC restored from it and a clone
of the PVC, each read by a pod → expansion (online, or offline at the pod's restart where
the node cannot grow a mounted ext4) → WaitForFirstConsumer → a raw block PVC written by
one pod and read by the next → ReadOnlyMany readers of a restored snapshot → deletion of
it all (VolumeAttachments, PVs and VolumeSnapshotContents gone). Every file's SHA-256 is
compared with what the writer printed.

Settings (environment):
  KUBECONFIG               the cluster (required)
  K8S_E2E_IMAGE            an image with sh, dd, sync, sha256sum, df, cat (busybox:1.36)
  K8S_E2E_PULL_POLICY      its imagePullPolicy (IfNotPresent; the lab: Never)
  K8S_E2E_HOST_NETWORK     1: pods on the host network (the lab has no pod network)
  K8S_E2E_POD_LOGS         the kubelet's pod log directory, read when `kubectl logs`
                           cannot reach the kubelet (the lab: $LAB/kubelet/pod-logs)
  K8S_E2E_TIMEOUT          seconds to wait for each step (180)
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DRIVER = "csi.cargohold.io"
IMAGE = os.environ.get("K8S_E2E_IMAGE", "busybox:1.36")
PULL = os.environ.get("K8S_E2E_PULL_POLICY", "IfNotPresent")
HOST_NETWORK = bool(os.environ.get("K8S_E2E_HOST_NETWORK"))
POD_LOGS = os.environ.get("K8S_E2E_POD_LOGS", "")
TIMEOUT = float(os.environ.get("K8S_E2E_TIMEOUT", "180"))
NS = f"cargohold-e2e-{uuid.uuid4().hex[:6]}"
IMM, WFFC = "e2e-cargohold-immediate", "e2e-cargohold-wffc"
SHA_LINE = re.compile(r"^([0-9a-f]{64})\s+\*?(\S+)$")
T = TypeVar("T")

REPORT: list[str] = []  # printed at the end of the run (conftest.pytest_terminal_summary)
S: dict[str, Any] = {}  # what one step hands the next


# --- kubectl ---------------------------------------------------------------------------


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    p = subprocess.run(
        ["kubectl", *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def apply(obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


def get(kind: str, name: str, ns: str | None = NS) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json", "--ignore-not-found"]
    out = kubectl(*args, *(["-n", ns] if ns else []))
    return json.loads(out) if out.strip() else None


def items(kind: str, ns: str | None = NS) -> list[dict[str, Any]]:
    out = kubectl("get", kind, "-o", "json", *(["-n", ns] if ns else []))
    return list(json.loads(out)["items"])


def events() -> str:
    return kubectl(
        "get", "events", "-n", NS, "--sort-by=.lastTimestamp",
        "-o", "custom-columns=OBJ:.involvedObject.name,REASON:.reason,MSG:.message",
        check=False,
    )[-4000:]  # fmt: skip


def wait_for(desc: str, fn: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {desc}\nevents:\n{events()}")
        time.sleep(1)


# --- objects -----------------------------------------------------------------------------


def pvc(
    name: str,
    size: str,
    sc: str = IMM,
    *,
    modes: tuple[str, ...] = ("ReadWriteOnce",),
    block: bool = False,
    source: dict[str, str] | None = None,
) -> None:
    spec: dict[str, Any] = {
        "accessModes": list(modes),
        "storageClassName": sc,
        "resources": {"requests": {"storage": size}},
    }
    if block:
        spec["volumeMode"] = "Block"
    if source:
        spec["dataSource"] = source
    apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})  # fmt: skip


def pod(name: str, claim: str, script: str, *, block: bool = False, ro: bool = False) -> None:
    """A pod running ``script`` with the claim at /data (or /dev/e2e); it prints E2E-DONE
    or E2E-FAILED, then sleeps, so that the volume stays published until it is deleted."""
    c: dict[str, Any] = {
        "name": "c",
        "image": IMAGE,
        "imagePullPolicy": PULL,
        "command": [
            "/bin/sh",
            "-c",
            f"({script}) && echo E2E-DONE || echo E2E-FAILED; sleep 36000",
        ],
    }
    if block:
        c["volumeDevices"] = [{"name": "v", "devicePath": "/dev/e2e"}]
    else:
        c["volumeMounts"] = [{"name": "v", "mountPath": "/data", "readOnly": ro}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [c],
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim, "readOnly": ro}}],
    }
    if HOST_NETWORK:
        spec["hostNetwork"] = True
    apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
           "spec": spec})  # fmt: skip


def logs(name: str) -> str:
    p = subprocess.run(
        ["kubectl", "logs", "-n", NS, name, "--request-timeout=10s"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if p.returncode == 0:
        return p.stdout
    if not POD_LOGS:
        return ""
    out = []
    for f in sorted(glob.glob(os.path.join(POD_LOGS, f"{NS}_{name}_*", "c", "*.log"))):
        for line in Path(f).read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)  # CRI: TIME STREAM TAG MESSAGE
            out.append(parts[3] if len(parts) == 4 else line)
    return "\n".join(out) + "\n"


def finished(name: str, timeout: float = TIMEOUT) -> str:
    """The pod's output once its script is done; fails when the script failed."""

    def done() -> str | None:
        text = logs(name)
        return text if ("E2E-DONE" in text or "E2E-FAILED" in text) else None

    text = wait_for(f"pod {name} runs its script", done, timeout)
    assert "E2E-DONE" in text, f"pod {name}:\n{text}"
    return text


def sums(text: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in map(SHA_LINE.match, text.splitlines()) if m}


def delete_pods(*names: str) -> None:
    kubectl("delete", "pod", "-n", NS, *names, "--grace-period=1", "--wait=true",
            f"--timeout={int(TIMEOUT)}s")  # fmt: skip


def bound(name: str) -> str | None:
    c = get("pvc", name)
    return c["spec"].get("volumeName") if c and c["status"].get("phase") == "Bound" else None


def shipped_storage_classes() -> list[dict[str, Any]]:
    """Every StorageClass deploy/ ships: the kustomizations base, ha and examples/*."""
    dirs = [ROOT / "deploy" / "base", ROOT / "deploy" / "ha"]
    dirs += sorted(p.parent for p in (ROOT / "deploy" / "examples").glob("*/kustomization.yaml"))
    found: dict[str, dict[str, Any]] = {}
    for d in dirs:
        for doc in yaml.safe_load_all(kubectl("kustomize", str(d))):
            if doc and doc.get("kind") == "StorageClass":
                found.setdefault(doc["metadata"]["name"], doc)
    return list(found.values())


WRITE = (
    "for i in 1 2 3 4 5; do dd if=/dev/urandom of=/data/f$i bs=1k count=$((i * 333)) "
    "2>/dev/null || exit 1; done; sync && cd /data && sha256sum f1 f2 f3 f4 f5 > /data/SUMS "
    "&& sync && cat /data/SUMS"
)
VERIFY = "cd /data && sha256sum -c SUMS && sha256sum f1 f2 f3 f4 f5"


def same_files(text: str) -> None:
    got = sums(text)
    assert got == S["files"], (got, S["files"])


# --- the suite ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def cleanup() -> Any:
    """Whatever a failed step left: the namespace's pods, snapshots and PVCs (so their
    volumes are deleted), the namespace, the suite's StorageClasses."""
    yield
    if get("namespace", NS, None) is not None:
        for kind in ("pods", "volumesnapshots", "pvc"):
            kubectl("delete", kind, "--all", "-n", NS, "--grace-period=1", "--wait=false",
                    check=False)  # fmt: skip
        kubectl("delete", "namespace", NS, "--wait=false", check=False)
    if S.get("classes"):
        kubectl("delete", "storageclass", *S["classes"], "--ignore-not-found", check=False)


def test_cluster_runs_the_driver() -> None:
    v = json.loads(kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    nodes = items("nodes", None)
    kubelets = sorted({n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes})
    runtimes = sorted({n["status"]["nodeInfo"]["containerRuntimeVersion"] for n in nodes})
    images = sorted(
        {
            c["image"]
            for p in items("pods", None)
            for c in p["spec"]["containers"]
            if "csi" in c["image"] or "cargohold" in c["image"]
        }
    )
    REPORT.append(f"Kubernetes {v}; kubelets {kubelets}; runtimes {runtimes}; namespace {NS}")
    REPORT.append(f"CSI images running as pods: {images or 'none (host processes)'}")
    with_driver = [
        n["metadata"]["name"]
        for n in items("csinodes", None)
        if any(d["name"] == DRIVER for d in n["spec"].get("drivers") or [])
    ]
    assert with_driver, f"no node has {DRIVER} registered (CSINode): install the driver first"
    S["nodes"] = with_driver


def test_objects_from_deploy() -> None:
    """The CSIDriver and VolumeSnapshotClass as shipped; the StorageClasses as copies."""
    kubectl("apply", "-f", str(ROOT / "deploy/base/csidriver.yaml"))
    kubectl("apply", "-f", str(ROOT / "deploy/base/snapshotclass.yaml"))
    classes = shipped_storage_classes()
    assert classes, "deploy/ ships no StorageClass"
    S["classes"] = []
    for sc in classes:
        params = sc.get("parameters") or {}
        # external-provisioner refuses a class with both keys; schema checks cannot see it
        assert not ("fsType" in params and "csi.storage.k8s.io/fstype" in params), sc
        for suffix, mode in (("immediate", "Immediate"), ("wffc", sc.get("volumeBindingMode"))):
            copy = json.loads(json.dumps(sc))
            copy["metadata"] = {"name": f"e2e-{sc['metadata']['name']}-{suffix}"}
            copy["volumeBindingMode"] = mode or "Immediate"
            if get("storageclass", copy["metadata"]["name"], None) is None:
                apply(copy)
            S["classes"].append(copy["metadata"]["name"])
    assert IMM in S["classes"] and WFFC in S["classes"]
    kubectl("create", "namespace", NS)
    REPORT.append(f"shipped StorageClasses: {[c['metadata']['name'] for c in classes]}")


def test_every_shipped_storage_class_provisions() -> None:
    names = [c for c in S["classes"] if c.endswith("-immediate")]
    for i, sc in enumerate(names):
        pvc(f"sc-{i}", "64Mi", sc)
    for i, sc in enumerate(names):
        wait_for(f"a PVC of class {sc} is Bound", lambda i=i: bound(f"sc-{i}"))  # type: ignore[misc]
    kubectl("delete", "pvc", "-n", NS, *[f"sc-{i}" for i in range(len(names))], "--wait=false")


def test_pod_writes_files_to_a_pvc() -> None:
    pvc("data", "256Mi")
    S["pv"] = wait_for("PVC data is Bound (Immediate)", lambda: bound("data"))
    pod("writer", "data", WRITE)
    S["files"] = sums(finished("writer"))
    assert sorted(S["files"]) == ["f1", "f2", "f3", "f4", "f5"]


def test_the_pvc_shows_cargohold_events() -> None:
    """The controller plugin posts the manager's events of the PVC's volume on the PVC
    (csi/pvc_events.py): created and attached, from source cargohold, named by event id."""

    def reasons() -> dict[str, dict[str, Any]] | None:
        out = kubectl("get", "events", "-n", NS, "-o", "json",
                      "--field-selector", "involvedObject.name=data")  # fmt: skip
        got = {
            e["reason"]: e
            for e in json.loads(out)["items"]
            if (e.get("source") or {}).get("component") == "cargohold"
        }
        return got if {"VolumeCreated", "VolumeAttached"} <= set(got) else None

    got = wait_for("cargohold's VolumeCreated and VolumeAttached events on PVC data", reasons)
    claim = get("pvc", "data")
    assert claim is not None
    for e in got.values():
        obj = e["involvedObject"]
        assert (obj["kind"], obj["name"], obj["uid"]) == (
            "PersistentVolumeClaim",
            "data",
            claim["metadata"]["uid"],
        )
        assert e["type"] == "Normal" and e["metadata"]["name"].startswith("data.cargohold.")
        assert S["pv"] in e["message"], e["message"]
    described = kubectl("describe", "pvc", "data", "-n", NS)
    assert "VolumeCreated" in described and "VolumeAttached" in described, described
    REPORT.append(
        "PVC events: " + "; ".join(f"{r}: {e['message']}" for r, e in sorted(got.items()))
    )


def test_snapshot_restore_and_clone() -> None:
    apply({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
           "metadata": {"name": "snap", "namespace": NS},
           "spec": {"volumeSnapshotClassName": "cargohold",
                    "source": {"persistentVolumeClaimName": "data"}}})  # fmt: skip

    def ready() -> bool:
        s = get("volumesnapshot", "snap")
        return bool(s and (s.get("status") or {}).get("readyToUse"))

    wait_for("VolumeSnapshot snap readyToUse", ready)
    snap = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    pvc("restored", "256Mi", source=snap)
    pvc("cloned", "256Mi", source={"kind": "PersistentVolumeClaim", "name": "data"})
    for name in ("restored", "cloned"):
        wait_for(f"PVC {name} is Bound", lambda name=name: bound(name))  # type: ignore[misc]
        pod(f"read-{name}", name, VERIFY)
    for name in ("restored", "cloned"):
        same_files(finished(f"read-{name}"))
    delete_pods("read-restored", "read-cloned")


def test_expansion() -> None:
    """The PVC grows 256Mi → 512Mi; the filesystem grows online, or (a node that cannot
    grow a mounted ext4, like the k8s-lab's) at the pod's restart; the files stay."""
    kubectl("patch", "pvc", "data", "-n", NS, "-p",
            '{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}')  # fmt: skip

    def pv_grown() -> bool:
        pv = get("pv", S["pv"], None)
        return bool(pv and pv["spec"]["capacity"]["storage"] == "512Mi")

    wait_for("the PV is 512Mi (ControllerExpandVolume)", pv_grown)

    def pvc_grown() -> bool:
        c = get("pvc", "data")
        return bool(c and (c["status"].get("capacity") or {}).get("storage") == "512Mi")

    how = "online"
    try:
        wait_for("the PVC's capacity is 512Mi (NodeExpandVolume)", pvc_grown, 60)
    except AssertionError:
        how = "offline, at the pod's restart"
    delete_pods("writer")
    pod("grown", "data", f"{VERIFY} && df -k /data")
    text = finished("grown")
    same_files(text)
    wait_for("the PVC's capacity is 512Mi", pvc_grown)
    kib = next(int(ln.split()[1]) for ln in text.splitlines() if ln.rstrip().endswith("/data"))
    assert kib > 400 * 1024, text
    REPORT.append(f"expansion: the filesystem grew {how} to {kib // 1024} MiB")
    delete_pods("grown")


def test_wait_for_first_consumer() -> None:
    pvc("late", "128Mi", WFFC)
    time.sleep(5)
    assert bound("late") is None, "a WaitForFirstConsumer PVC was bound before its pod"
    pod("late-user", "late", f"{WRITE} && {VERIFY}")
    finished("late-user")
    pv = get("pv", bound("late") or "", None)
    node = (get("pod", "late-user") or {})["spec"]["nodeName"]
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] if pv else []
    values = {v for t in terms for e in t["matchExpressions"] for v in e["values"]}
    assert node in values, (node, terms)  # provisioned for the node the pod was scheduled to
    delete_pods("late-user")


def test_raw_block() -> None:
    pvc("raw", "64Mi", block=True)
    wait_for("PVC raw is Bound", lambda: bound("raw"))
    pod("raw-writer", "raw",
        "dd if=/dev/urandom of=/dev/e2e bs=1M count=16 conv=fsync 2>/dev/null "
        "&& dd if=/dev/e2e bs=1M count=16 2>/dev/null | sha256sum", block=True)  # fmt: skip
    first = re.findall(r"[0-9a-f]{64}", finished("raw-writer"))
    delete_pods("raw-writer")
    pod("raw-reader", "raw", "dd if=/dev/e2e bs=1M count=16 2>/dev/null | sha256sum", block=True)
    again = re.findall(r"[0-9a-f]{64}", finished("raw-reader"))
    assert first and first == again, (first, again)
    delete_pods("raw-reader")


def test_read_only_many() -> None:
    snap = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    pvc("shared", "256Mi", modes=("ReadOnlyMany",), source=snap)
    wait_for("PVC shared (ReadOnlyMany) is Bound", lambda: bound("shared"))
    probe = f"{VERIFY} && if echo x > /data/new 2>/dev/null; then echo WRITABLE; else echo READ-ONLY; fi"
    for i in (1, 2):
        pod(f"reader-{i}", "shared", probe, ro=True)
    for i in (1, 2):
        text = finished(f"reader-{i}")
        same_files(text)
        assert "READ-ONLY" in text and "WRITABLE" not in text, text
    delete_pods("reader-1", "reader-2")


def test_delete_everything() -> None:
    pvs = {c["spec"].get("volumeName") for c in items("pvc")} - {None}
    kubectl("delete", "pod", "--all", "-n", NS, "--grace-period=1", "--wait=true")

    def detached() -> bool:
        return not [
            a for a in items("volumeattachments", None)
            if a["spec"]["source"].get("persistentVolumeName") in pvs
        ]  # fmt: skip

    wait_for("no VolumeAttachment of the suite's PVs is left (ControllerUnpublish)", detached)
    contents = {
        (s.get("status") or {}).get("boundVolumeSnapshotContentName")
        for s in items("volumesnapshots")
    } - {None}
    kubectl("delete", "volumesnapshot", "--all", "-n", NS, "--wait=false")
    kubectl("delete", "pvc", "--all", "-n", NS, "--wait=false")
    wait_for("the suite's PVs are deleted (DeleteVolume)",
             lambda: not pvs & {p["metadata"]["name"] for p in items("pv", None)})  # fmt: skip
    wait_for("the suite's VolumeSnapshotContents are deleted (DeleteSnapshot)",
             lambda: not contents & {c["metadata"]["name"]
                                     for c in items("volumesnapshotcontents", None)})  # fmt: skip
    kubectl("delete", "namespace", NS, "--wait=false")
    kubectl("delete", "storageclass", *S["classes"], "--ignore-not-found")
