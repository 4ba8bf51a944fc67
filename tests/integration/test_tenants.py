"""Tenant isolation through a real manager: a ``cargohold manager`` process serving mutual
TLS (``--tls-dir``), callers identified by real certificates of the cluster's CA — the admin,
and two tenants' CSI drivers (``csi/k8s-a?tenant=team-a``, ``csi/k8s-b?tenant=team-b``).

- Every route with a ``{volume}`` (or ``{op}``) in its path, taken from the manager's live
  OpenAPI schema so that a new route is covered without editing this file: tenant B's
  request on tenant A's volume is answered exactly as for a volume that does not exist
  (404, or 403 where B's role lacks the permission), and A's volume is unchanged after all of
  them. Every list route: B's answer never names A's volume or operation.
- Quotas: a create or an expansion over the quota is 507 naming the quota and the use.
- The admin sees every tenant's volumes; tenants cannot reach /api/v1/tenants.
- The CSI controller (its real gRPC server on a unix socket) authenticates as its tenant
  and nothing else: CreateVolume/ListVolumes/ListSnapshots/CreateSnapshot/Publish per tenant.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from cargohold.control.client import ManagerClient
from cargohold.csi import stubs
from cargohold.csi.server import build as build_csi
from cargohold.csi.settings import CsiSettings
from cargohold.security.ca import CertificateAuthority
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import Credentials

ROOT = Path(__file__).resolve().parents[2]
GiB = 1 << 30
A_VOL = "a-vol"
GHOST = "no-such-vol"  # the control: a volume that does not exist

# a valid body per request schema, so that B's request is refused for what it touches and
# not for its body; a new route with a body of another schema fails until one is added here
BODIES: dict[str, Any] = {
    "AttachRequest": {"node": "node-1"},
    "ExpandRequest": {"size_bytes": 2 * GiB},
    "SnapshotCreate": {"name": "b-snap"},
    "BackupCreate": {"target": "b-target"},
    "VolumeCreate": {"name": "b-clone", "size_bytes": GiB},
    "VolumeUpdate": {"qos": {"max_iops": 1000}},
    "SnapshotMetadataRequest": {"max_results": 16},
    "KeyChoice": {"key": "default"},
    "DataKeyRequest": {"node": "node-1", "epoch": 1},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    url: str
    cid: str
    dirs: dict[str, Path]
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, who: str) -> httpx.Client:
        ctx = Credentials.load(self.dirs[who]).client_context()
        return httpx.Client(base_url=self.url, verify=ctx, timeout=15)

    def manager_client(self, who: str) -> ManagerClient:
        ctx = Credentials.load(self.dirs[who]).client_context()
        return ManagerClient(self.url, transport=httpx.HTTPTransport(verify=ctx), timeout=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    d = tmp_path_factory.mktemp("tenants")
    cid = "c-" + secrets.token_hex(16)
    ca = CertificateAuthority.create(d / "ca", cid)
    people = {
        "manager": Identity(cid, Role.MANAGER, "mgr-test"),
        "admin": Identity(cid, Role.ADMIN, "alice"),
        "a": Identity(cid, Role.CSI, "k8s-a", tenant="team-a"),
        "a-reader": Identity(cid, Role.READER, "bob", tenant="team-a"),
        "b": Identity(cid, Role.CSI, "k8s-b", tenant="team-b"),
        # a node registers itself only (its agent's certificate: docs/security.md)
        **{f"node-{i}": Identity(cid, Role.AGENT, f"node-{i}") for i in range(1, 4)},
    }
    dirs = {k: ca.issue(ident, hosts=["127.0.0.1"]).write(d / k) for k, ident in people.items()}
    # a certificate of another CA, for the same cluster id and the admin's role
    other = CertificateAuthority.create(d / "other-ca", cid)
    dirs["foreign"] = other.issue(people["admin"]).write(d / "foreign")
    port = _free_port()
    log = d / "manager.log"
    cmd = [sys.executable, "-m", "cargohold", "manager", "--state", f"sqlite:{d / 'state.db'}"]
    cmd += ["--listen", f"127.0.0.1:{port}", "--id", "mgr-test", "--init", "--cluster-id", cid]
    cmd += ["--tls-dir", str(dirs["manager"])]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CARGOHOLD_LOG": "WARNING",
        "CARGOHOLD_MANAGER_NODE_DOWN_AFTER": "600",  # its nodes never heartbeat
    }
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    c = Cluster(f"https://127.0.0.1:{port}", cid, dirs, proc, log)
    try:
        with c.client("admin") as admin:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"the manager exited:\n{c.output()}"
                try:
                    if admin.get("/livez").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"the manager did not start:\n{c.output()}"
                time.sleep(0.1)
            for i in range(1, 4):
                reg = {
                    "address": "127.0.0.1",
                    "replica_port": 9500 + i,
                    "disks": [{"name": "disk-0", "path": f"/d{i}", "capacity_bytes": 100 * GiB}],
                }
                with c.client(f"node-{i}") as agent:
                    assert agent.put(f"/api/v1/nodes/node-{i}", json=reg).status_code == 200
            ok = admin.post("/api/v1/tenants", json={"name": "team-a", "quota_bytes": 4 * GiB})
            assert ok.status_code == 201, ok.text
            assert admin.post("/api/v1/tenants", json={"name": "team-b"}).status_code == 201
        yield c
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def a_volume(cluster: Cluster) -> dict[str, Any]:
    """Tenant A's volume, a snapshot record of it and its pending operation."""
    with cluster.client("a") as a:
        r = a.post("/api/v1/volumes", json={"name": A_VOL, "size_bytes": GiB})
        assert r.status_code == 201, r.text
        assert r.json()["tenant"] == "team-a"
        op = a.post(f"/api/v1/volumes/{A_VOL}/snapshots", json={"name": "s1"})
        assert op.status_code == 202, op.text
        return {"volume": r.json(), "op": op.json()["id"]}


def _error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    return r.status_code, str(body.get("error", {}).get("message", body))


def _body(spec: dict[str, Any], op: dict[str, Any]) -> Any:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    name = content["schema"]["$ref"].rsplit("/", 1)[-1]
    assert name in BODIES, f"add an example {name} body to BODIES for the tenant test"
    return BODIES[name]


def test_the_manager_refuses_callers_without_a_certificate_of_its_ca(cluster: Cluster) -> None:
    anon = ssl.create_default_context(cafile=str(cluster.dirs["manager"] / "ca.crt"))
    anon.check_hostname = False
    with httpx.Client(base_url=cluster.url, verify=anon, timeout=10) as c:
        # no client certificate (optional at the handshake: tokens work too) and no token
        assert c.get("/api/v1/volumes").status_code == 401
    with cluster.client("foreign") as c, pytest.raises(httpx.TransportError):
        c.get("/api/v1/volumes")  # another CA's certificate: no handshake either
    with cluster.client("admin") as c:  # and the manager goes on serving
        assert c.get("/api/v1/volumes").status_code == 200


def test_tenant_b_cannot_reach_tenant_a_volumes_through_any_route(
    cluster: Cluster, a_volume: dict[str, Any]
) -> None:
    with cluster.client("admin") as admin:
        spec = admin.get("/openapi.json").json()
        before = admin.get(f"/api/v1/volumes/{A_VOL}").json()
        snaps_before = admin.get(f"/api/v1/volumes/{A_VOL}/snapshots").json()
    covered: set[tuple[str, str]] = set()
    with cluster.client("b") as b, cluster.client("a") as a:
        for path, ops in spec["paths"].items():
            params = set(re.findall(r"{(\w+)}", path))
            if "volume" not in params:
                continue
            for method, op in ops.items():
                fill = {"volume": A_VOL, "snapshot": "s1"}
                ghost = {"volume": GHOST, "snapshot": "s1"}
                assert params <= set(fill), f"{method} {path}: unknown path parameter"
                body = _body(spec, op)
                got = b.request(method, path.format(**fill), json=body)
                control = b.request(method, path.format(**ghost), json=body)
                status, msg = _error(got)
                c_status, c_msg = _error(control)
                assert status in (403, 404), f"B: {method} {path} -> {got.status_code} {got.text}"
                assert (status, msg.replace(A_VOL, GHOST)) == (c_status, c_msg), (
                    f"B's {method} {path} tells A's volume from a missing one: {msg!r} vs {c_msg!r}"
                )
                covered.add((method, path))
        # the operation routes: A's operation is not B's
        for path, ops in spec["paths"].items():
            if "{op}" in path:
                for method in ops:
                    r = b.request(method, path.format(op=a_volume["op"]))
                    assert r.status_code == 404, r.text
                    assert a.request(method, path.format(op=a_volume["op"])).status_code == 200
                    covered.add((method, path))
        # every list route (GET without parameters): nothing of A's in B's answers
        for path, ops in spec["paths"].items():
            if "{" in path or "get" not in ops or not path.startswith("/api/"):
                continue
            r = b.get(path)
            assert r.status_code in (200, 403), f"B: GET {path} -> {r.status_code} {r.text}"
            assert A_VOL not in r.text and a_volume["op"] not in r.text, f"GET {path}: {r.text}"
            covered.add(("get", path))
        assert A_VOL in a.get("/api/v1/volumes").text  # the control: A does see it
        assert a_volume["op"] in a.get("/api/v1/operations").text
    for must in [
        ("get", "/api/v1/volumes/{volume}"),
        ("delete", "/api/v1/volumes/{volume}"),
        ("post", "/api/v1/volumes/{volume}/attach"),
        ("post", "/api/v1/volumes/{volume}/expand"),
        ("post", "/api/v1/volumes/{volume}/snapshots"),
        ("delete", "/api/v1/volumes/{volume}/snapshots/{snapshot}"),
        ("get", "/api/v1/volumes"),
        ("get", "/api/v1/attachments"),
        ("get", "/api/v1/operations"),
    ]:
        assert must in covered, f"the schema walk missed {must}"
    # nothing B asked for happened to A's volume
    with cluster.client("admin") as admin:
        after = admin.get(f"/api/v1/volumes/{A_VOL}").json()
        assert after["state"] == before["state"] and after["attached_node"] is None
        assert after["size_bytes"] == GiB and after["epoch"] == before["epoch"]
        assert admin.get(f"/api/v1/volumes/{A_VOL}/snapshots").json() == snaps_before
        ops = admin.get("/api/v1/operations", params={"volume": A_VOL}).json()
        assert [o["id"] for o in ops] == [a_volume["op"]]  # no expansion, no snapshot of B's
        assert "b-clone" not in admin.get("/api/v1/volumes").text


def test_quota_refusals(cluster: Cluster, a_volume: dict[str, Any]) -> None:
    with cluster.client("a") as a, cluster.client("admin") as admin:
        # team-a: quota 4 GiB, uses 1 GiB (a-vol)
        r = a.post("/api/v1/volumes", json={"name": "a-big", "size_bytes": 4 * GiB})
        status, msg = _error(r)
        assert status == 507 and r.json()["error"]["type"] == "Unschedulable", r.text
        assert f"uses {GiB} of {4 * GiB} bytes" in msg and "tenant team-a's quota" in msg
        assert a.get("/api/v1/volumes/a-big").status_code == 404  # nothing was made
        assert a.post("/api/v1/volumes", json={"name": "a-2", "size_bytes": 3 * GiB}).is_success
        r = a.post(f"/api/v1/volumes/{A_VOL}/expand", json={"size_bytes": 2 * GiB})
        assert r.status_code == 507 and "expanding volume a-vol" in r.text, r.text
        t = admin.put("/api/v1/tenants/team-a/quota", json={"quota_bytes": 5 * GiB}).json()
        assert (t["quota_bytes"], t["used_bytes"], t["volumes"]) == (5 * GiB, 4 * GiB, 2)
        r = a.post(f"/api/v1/volumes/{A_VOL}/expand", json={"size_bytes": 2 * GiB})
        assert r.status_code == 202, r.text
        assert admin.get("/api/v1/tenants/team-a").json()["used_bytes"] == 5 * GiB
        r = admin.delete("/api/v1/tenants/team-a")
        assert r.status_code == 409 and "still has 2 volume(s)" in r.text, r.text


def test_admin_sees_all_and_only_the_admin_manages_tenants(
    cluster: Cluster, a_volume: dict[str, Any]
) -> None:
    with cluster.client("admin") as admin, cluster.client("b") as b:
        r = admin.post(
            "/api/v1/volumes", json={"name": "b-own", "size_bytes": GiB, "tenant": "team-b"}
        )
        assert r.status_code == 201 and r.json()["tenant"] == "team-b", r.text
        r = admin.post("/api/v1/volumes", json={"name": "provider", "size_bytes": GiB})
        assert r.status_code == 201 and r.json()["tenant"] is None
        names = {v["name"]: v["tenant"] for v in admin.get("/api/v1/volumes").json()}
        assert names[A_VOL] == "team-a" and names["b-own"] == "team-b"
        assert names["provider"] is None
        assert [v["name"] for v in b.get("/api/v1/volumes").json()] == ["b-own"]
        for who in ("a", "b", "a-reader"):
            with cluster.client(who) as c:
                assert c.get("/api/v1/tenants").status_code == 403
                assert c.post("/api/v1/tenants", json={"name": "mine"}).status_code == 403
        r = b.post("/api/v1/volumes", json={"name": "x", "size_bytes": GiB, "tenant": "team-a"})
        assert r.status_code == 403, r.text
    with cluster.client("a-reader") as reader:  # a tenant's reader: reads its own, no writes
        seen = reader.get("/api/v1/volumes").json()
        assert A_VOL in {v["name"] for v in seen} and {v["tenant"] for v in seen} == {"team-a"}
        assert (
            reader.post("/api/v1/volumes", json={"name": "r", "size_bytes": GiB}).status_code == 403
        )


# --- the CSI controller, authenticated as its tenant -------------------------------------------


@pytest.fixture(scope="module")
def csi(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real CSI controller (gRPC on a unix socket) per tenant, each with its tenant's
    credentials and nothing else."""
    d = tmp_path_factory.mktemp("csi")
    pb, pb_grpc = stubs()
    out: dict[str, Any] = {}
    servers, clients, channels = [], [], []
    for who in ("a", "b"):
        client = cluster.manager_client(who)
        config = CsiSettings(
            endpoint=f"unix://{d}/{who}.sock",
            controller=True,
            state_dir=str(d / who),
            timeout=3.0,
        )
        servers.append(build_csi(config, client))
        clients.append(client)
        ch = grpc.insecure_channel(f"unix://{d}/{who}.sock")
        channels.append(ch)
        out[who] = pb_grpc.ControllerStub(ch)
    out["pb"] = pb
    yield out
    for ch in channels:
        ch.close()
    for s in servers:
        s.stop(1).wait()
    for c in clients:
        c.close()


def test_the_csi_controller_works_per_tenant(
    csi: dict[str, Any], cluster: Cluster, a_volume: dict[str, Any]
) -> None:
    pb, a, b = csi["pb"], csi["a"], csi["b"]
    AM = pb.VolumeCapability.AccessMode
    cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=AM(mode=AM.SINGLE_NODE_WRITER),
    )

    def create(stub: Any, name: str, size: int = GiB) -> Any:
        req = pb.CreateVolumeRequest(
            name=name,
            capacity_range=pb.CapacityRange(required_bytes=size),
            volume_capabilities=[cap],
            parameters={"numberOfReplicas": "2"},
        )
        return stub.CreateVolume(req).volume

    vb = create(b, "pvc-bbbb")
    assert vb.volume_id == "pvc-bbbb"
    with cluster.client("admin") as admin:
        assert admin.get("/api/v1/volumes/pvc-bbbb").json()["tenant"] == "team-b"
    ids_b = {e.volume.volume_id for e in b.ListVolumes(pb.ListVolumesRequest()).entries}
    ids_a = {e.volume.volume_id for e in a.ListVolumes(pb.ListVolumesRequest()).entries}
    assert "pvc-bbbb" in ids_b and "pvc-bbbb" not in ids_a
    assert A_VOL in ids_a and A_VOL not in ids_b
    # A's quota, set to what it uses now, refuses its next PVC: RESOURCE_EXHAUSTED, with why
    with cluster.client("admin") as admin:
        used = admin.get("/api/v1/tenants/team-a").json()["used_bytes"]
        r = admin.put("/api/v1/tenants/team-a/quota", json={"quota_bytes": used})
        assert r.status_code == 200, r.text
    with pytest.raises(grpc.RpcError) as e:
        create(a, "pvc-aaaa")
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert "quota" in (e.value.details() or "")
    # B cannot snapshot, publish or see A's volume; B's DeleteVolume of it is a no-op
    with pytest.raises(grpc.RpcError) as e:
        b.CreateSnapshot(pb.CreateSnapshotRequest(source_volume_id=A_VOL, name="steal"))
    assert e.value.code() is grpc.StatusCode.NOT_FOUND, e.value.details()
    backup = {"type": "backup", "backupTarget": "nfs"}  # a backup of A's volume: the same
    with pytest.raises(grpc.RpcError) as e:
        b.CreateSnapshot(
            pb.CreateSnapshotRequest(source_volume_id=A_VOL, name="steal-b", parameters=backup)
        )
    assert e.value.code() is grpc.StatusCode.NOT_FOUND, e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        b.ControllerPublishVolume(
            pb.ControllerPublishVolumeRequest(
                volume_id=A_VOL, node_id="node-1", volume_capability=cap
            )
        )
    assert e.value.code() is grpc.StatusCode.NOT_FOUND, e.value.details()
    snaps_b = b.ListSnapshots(pb.ListSnapshotsRequest()).entries
    assert all(s.snapshot.source_volume_id != A_VOL for s in snaps_b)
    listed = b.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=A_VOL)).entries
    assert list(listed) == []
    b.DeleteVolume(pb.DeleteVolumeRequest(volume_id=A_VOL))  # "already gone", for B
    with cluster.client("admin") as admin:
        v = admin.get(f"/api/v1/volumes/{A_VOL}").json()
        assert v["state"] != "deleting" and v["tenant"] == "team-a"
    b.DeleteVolume(pb.DeleteVolumeRequest(volume_id="pvc-bbbb"))  # its own: goes
    with cluster.client("admin") as admin:
        r = admin.get("/api/v1/volumes/pvc-bbbb")  # being deleted, or gone already
        assert r.status_code == 404 or r.json()["state"] == "deleting", r.text
