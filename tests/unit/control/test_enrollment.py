"""Joining, certificates, node removal and disk changes, in process (``Service`` over the
in-memory state store, a real CA in a temporary directory): the rules of
control/enrollment.py and control/disk_roots.py, each able to fail."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from cargohold.control.disk_roots import check_disk_path, check_roots
from cargohold.control.enrollment import (
    EngineCertificateRequest,
    JoinRequest,
    JoinTokenCreate,
    RenewRequest,
)
from cargohold.control.model import EngineSpec, Replica, Volume, keys
from cargohold.control.repository import Repository, now
from cargohold.control.requests import DiskCreate
from cargohold.control.service import Service
from cargohold.control.settings import ManagerSettings
from cargohold.control.state import MemoryStateStore
from cargohold.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    WrongState,
)
from cargohold.security.ca import CertificateAuthority, make_csr, new_key
from cargohold.security.identity import Identity, Role
from cargohold.security.tls import cert_identity

GiB = 1 << 30


def csr(role: Role = Role.AGENT, name: str = "x") -> str:
    return make_csr(Identity("pending", role, name), new_key()).decode()


def serial(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def revoked(ca: CertificateAuthority) -> set[int]:
    return {int(str(e["serial"])) for e in ca.revoked()}


@pytest.fixture
async def svc(tmp_path: Path) -> Service:
    s = Service(
        Repository(MemoryStateStore()),
        ManagerSettings(disk_roots=[str(tmp_path / "roots")]),
        "memory",
        "t",
    )
    s.repo.cluster_id = "c1"
    s.ca = CertificateAuthority.create(tmp_path / "ca", "c1")
    s.tls_dir = tmp_path / "mgr-tls"
    s.tls_dir.mkdir()
    return s


async def token(s: Service, **kw: Any) -> str:
    out = await s.create_join_token(JoinTokenCreate(**kw), "admin/root")
    return str(out["token"])


def join_req(node: str, tok: str) -> JoinRequest:
    return JoinRequest(
        node=node,
        address="127.0.0.1",
        token=tok,
        csr=csr(Role.AGENT, node),
        replica_csr=csr(Role.REPLICA, node),
    )


async def test_join_signs_the_identities_the_ca_decides(svc: Service) -> None:
    out = await svc.join(join_req("node-1", await token(svc)))
    assert cert_identity(out["cert"].encode()) == Identity("c1", Role.AGENT, "node-1")
    assert cert_identity(out["replica_cert"].encode()) == Identity("c1", Role.REPLICA, "node-1")
    assert out["trust"] == svc.ca.trust_pem().decode()  # type: ignore[union-attr]
    # the digest is stored, never the token
    raw = [e.value for e in await svc.repo.store.range("/join-tokens/")]
    assert raw == []  # one use: gone after it


def sans(pem: str) -> list[str]:
    ext = x509.load_pem_x509_certificate(pem.encode()).extensions
    names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in names.get_values_for_type(x509.IPAddress)] + list(
        names.get_values_for_type(x509.DNSName)
    )


async def test_node_certificates_name_the_nodes_addresses(svc: Service) -> None:
    """Clients that check hostnames (Prometheus scraping /metrics) verify a joined node."""
    req = join_req("node-1", await token(svc)).model_copy(
        update={"address": "10.0.0.7", "hosts": ["10.0.0.7", "node-1.example", "fd00::7"]}
    )
    out = await svc.join(req)
    for k in ("cert", "replica_cert"):
        assert sans(out[k]) == ["10.0.0.7", "fd00::7", "node-1.example"]
    from cargohold.control.model import Registration

    await svc.register("node-1", Registration(address="10.0.0.8"))  # it moved
    renewed = await svc.renew(
        "node-1", RenewRequest(csr=csr(), replica_csr=csr(), hosts=["metrics.node-1.example"])
    )
    assert sans(renewed["cert"]) == ["10.0.0.8", "metrics.node-1.example"]


@pytest.mark.parametrize("bad", ["*.example", "a b", "-x.example", "x" * 64 + ".example", ""])
async def test_names_a_certificate_cannot_carry_are_refused(svc: Service, bad: str) -> None:
    tok = await token(svc)
    with pytest.raises(InvalidArgument, match="neither an IP address nor a DNS name"):
        await svc.join(join_req("node-1", tok).model_copy(update={"hosts": [bad]}))
    await svc.join(join_req("node-1", tok))  # no use of the token was taken


async def test_a_token_is_good_for_its_uses_only(svc: Service) -> None:
    tok = await token(svc, uses=2)
    await svc.join(join_req("node-1", tok))
    await svc.join(join_req("node-2", tok))
    with pytest.raises(Unauthenticated, match="unknown join token"):
        await svc.join(join_req("node-3", tok))


async def test_expired_forged_and_malformed_tokens_are_refused(svc: Service) -> None:
    tok = await token(svc, ttl_seconds=1)
    tid = tok.split("_")[1]

    key = f"/join-tokens/{tid}"
    e = await svc.repo.store.get(key)
    assert e is not None
    rec = json.loads(e.value)
    rec["expires_at"] = now() - 1
    await svc.repo.store.put(key, json.dumps(rec).encode())
    with pytest.raises(Unauthenticated, match="expired"):
        await svc.join(join_req("node-1", tok))
    good = await token(svc)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthenticated):
        await svc.join(join_req("node-1", forged))
    with pytest.raises(Unauthenticated, match="malformed"):
        await svc.join(join_req("node-1", "chk_nothing"))
    await svc.join(join_req("node-1", good))  # the real one still works: nothing was used


async def test_a_bad_csr_takes_no_use_of_the_token(svc: Service) -> None:
    tok = await token(svc)
    bad = join_req("node-1", tok).model_copy(
        update={
            "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"
        }
    )
    with pytest.raises(InvalidArgument):
        await svc.join(bad)
    await svc.join(join_req("node-1", tok))


async def test_a_live_node_cannot_be_joined_again_a_down_one_can(svc: Service) -> None:
    from cargohold.control.model import Registration

    first = await svc.join(join_req("node-1", await token(svc)))
    await svc.register("node-1", Registration(address="127.0.0.1"))  # heartbeat_at = now
    with pytest.raises(AlreadyExists, match="live agent"):
        await svc.join(join_req("node-1", await token(svc)))

    def down(n: Any) -> Any:
        n.down_since = now()
        return n

    await svc.repo.update_node("node-1", down)
    await svc.join(join_req("node-1", await token(svc)))  # a reinstall: allowed
    assert {serial(first["cert"]), serial(first["replica_cert"])} <= revoked(svc.ca)  # type: ignore[arg-type]


async def test_renewal_and_removal_revoke_every_certificate(svc: Service) -> None:
    from cargohold.control.model import Registration

    first = await svc.join(join_req("node-1", await token(svc)))
    await svc.register("node-1", Registration(address="127.0.0.1"))
    renewed = await svc.renew("node-1", RenewRequest(csr=csr(), replica_csr=csr()))
    assert serial(renewed["cert"]) != serial(first["cert"])
    assert cert_identity(renewed["cert"].encode()).name == "node-1"
    out = await svc.remove_node("node-1")
    assert out["revoked_certificates"] == 4
    want = {serial(c[k]) for c in (first, renewed) for k in ("cert", "replica_cert")}
    assert want <= revoked(svc.ca)  # type: ignore[arg-type]
    # the manager's own TLS directory got the new CRL
    assert (svc.tls_dir / "ca.crl").read_bytes() == svc.ca.crl_pem()  # type: ignore[union-attr,operator]
    with pytest.raises(NotFound):
        await svc.renew("node-1", RenewRequest(csr=csr(), replica_csr=csr()))


async def test_a_node_with_replicas_is_not_removed(svc: Service) -> None:
    from cargohold.control.model import Registration

    await svc.register("node-1", Registration(address="127.0.0.1"))
    await svc.repo.store.put(
        keys.replica("v", "v-r1"),
        Replica(id="v-r1", volume="v", node="node-1", disk="disk-0").model_dump_json().encode(),
    )
    with pytest.raises(WrongState, match="drain it first"):
        await svc.remove_node("node-1")


async def test_engine_certificates_only_for_the_engine_assigned_here(svc: Service) -> None:
    from cargohold.control.model import Registration

    for n in ("node-1", "node-2"):
        await svc.register(n, Registration(address="127.0.0.1"))
    vol = Volume(
        name="data",
        size_bytes=GiB,
        replicas_wanted=1,
        engine=EngineSpec(node="node-1", epoch=1),
    )
    await svc.repo.store.put(keys.volume("data"), vol.model_dump_json().encode())
    out = await svc.engine_certificate(
        "node-1", EngineCertificateRequest(volume="data", csr=csr(Role.ENGINE, "data"))
    )
    assert cert_identity(out["cert"].encode()) == Identity("c1", Role.ENGINE, "data")
    for node, volume in (("node-2", "data"), ("node-1", "other")):
        with pytest.raises(PermissionDenied, match="not assigned"):
            await svc.engine_certificate(
                node, EngineCertificateRequest(volume=volume, csr=csr(Role.ENGINE, volume))
            )


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc",
        "/etc/cargohold",
        "/proc",
        "/sys/fs",
        "/dev/sda",
        "/boot",
        "/usr/lib",
        "/root",
        "/var/lib/cargohold/../../../etc",
        "relative/path",
    ],
)
def test_system_paths_are_never_disks(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_disk_path(path, ["/var/lib/cargohold", "/"])


def test_symlinks_and_dotdot_are_resolved_first(tmp_path: Path) -> None:
    root = tmp_path / "roots"
    root.mkdir()
    (root / "to-etc").symlink_to("/etc")
    (root / "inside").mkdir()
    (root / "to-inside").symlink_to(root / "inside")
    with pytest.raises(InvalidArgument, match="system directory /etc"):
        check_disk_path(str(root / "to-etc"), [str(root)])
    with pytest.raises(InvalidArgument, match="not under an allowed disk root"):
        check_disk_path(str(root / ".." / "elsewhere"), [str(root)])
    assert check_disk_path(str(root / "to-inside"), [str(root)]) == str(root / "inside")
    assert check_disk_path(str(root / "new" / "disk"), [str(root)]) == str(root / "new" / "disk")
    with pytest.raises(InvalidArgument):
        check_roots(["/etc"])


async def test_disks_outside_the_roots_are_refused_and_nothing_is_recorded(
    svc: Service, tmp_path: Path
) -> None:
    from cargohold.control.model import Registration

    await svc.register("node-1", Registration(address="127.0.0.1"))
    (tmp_path / "roots").mkdir()
    os.symlink("/etc", tmp_path / "roots" / "evil")
    for p in ("/etc", "/proc", str(tmp_path / "roots" / "evil"), "/var/lib/cargohold/../../etc"):
        with pytest.raises(InvalidArgument):
            await svc.add_disk("node-1", DiskCreate(name="d1", path=p, capacity_bytes=GiB))
    assert await svc.repo.disks("node-1") == []
    ok = str(tmp_path / "roots" / "d1")
    await svc.add_disk("node-1", DiskCreate(name="d1", path=ok, capacity_bytes=GiB))
    assert [d.path for d in await svc.repo.disks("node-1")] == [ok]


async def test_a_disk_in_use_is_removed_only_after_its_drain(svc: Service, tmp_path: Path) -> None:
    from cargohold.control.model import Registration

    await svc.register("node-1", Registration(address="127.0.0.1"))
    path = str(tmp_path / "roots" / "d1")
    await svc.add_disk("node-1", DiskCreate(name="d1", path=path, capacity_bytes=GiB))
    rep = Replica(id="v-r1", volume="v", node="node-1", disk="d1")
    await svc.repo.store.put(keys.replica("v", "v-r1"), rep.model_dump_json().encode())
    with pytest.raises(WrongState, match="drain it first"):
        await svc.remove_disk("node-1", "d1")
    d = await svc.drain_disk("node-1", "d1")
    assert d["schedulable"] is False
    [r] = await svc.repo.replicas("v")
    assert r.evicting
    await svc.repo.store.delete(keys.replica("v", "v-r1"))  # the reconciler moved it
    await svc.remove_disk("node-1", "d1")
    assert await svc.repo.disks("node-1") == []
    with pytest.raises(NotFound):
        await svc.remove_disk("node-1", "d1")
