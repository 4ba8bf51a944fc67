"""Tenants: the scoping rules and the quota arithmetic (control/tenancy.py, pure), and the
manager's service over the in-memory state store — another tenant's volume is NotFound on
every call, the admin sees all, the quota holds on create and expand, and concurrent
creates do not overshoot it (the tenant record's compare-and-swap; without it they do)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from cargohold.control import service_volumes, tenancy
from cargohold.control.access import Tenant
from cargohold.control.model import Operation, OperationKind, OperationState, Volume
from cargohold.control.requests import (
    AttachRequest,
    ExpandRequest,
    SnapshotCreate,
    TenantCreate,
    TenantQuota,
    VolumeCreate,
)
from cargohold.control.state.base import Compare, Put
from cargohold.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unschedulable,
    WrongState,
)
from cargohold.security.identity import Identity, Role
from tests.unit.control.sim import Sim

GiB = 1 << 30
C = "c-" + "0" * 32
ADMIN = Identity(C, Role.ADMIN, "alice")
A = Identity(C, Role.CSI, "k8s-a", tenant="team-a")
A_READER = Identity(C, Role.READER, "bob", tenant="team-a")
B = Identity(C, Role.CSI, "k8s-b", tenant="team-b")


def vol(name: str, tenant: str | None, size: int = GiB) -> Volume:
    return Volume(name=name, size_bytes=size, replicas_wanted=1, tenant=tenant)


# --- the pure rules -------------------------------------------------------------------------


def test_visibility_follows_the_tenant_and_the_admin_sees_all() -> None:
    vols = [vol("a1", "team-a"), vol("b1", "team-b"), vol("own", None)]
    assert [v.name for v in tenancy.only_visible(A, vols)] == ["a1"]
    assert [v.name for v in tenancy.only_visible(B, vols)] == ["b1"]
    assert [v.name for v in tenancy.only_visible(ADMIN, vols)] == ["a1", "b1", "own"]
    assert [v.name for v in tenancy.only_visible(None, vols)] == ["a1", "b1", "own"]
    assert tenancy.check_visible(A, vols[0]) is vols[0]
    with pytest.raises(NotFound, match=r"^volume b1 not found$"):  # as if it did not exist
        tenancy.check_visible(A, vols[1])
    with pytest.raises(NotFound):  # the provider's own volumes are not a tenant's either
        tenancy.check_visible(A, vols[2])


def test_whose_a_new_volume_is() -> None:
    assert tenancy.owner_for_create(A, None) == "team-a"
    assert tenancy.owner_for_create(A, "team-a") == "team-a"
    with pytest.raises(PermissionDenied, match="only for tenant team-a"):
        tenancy.owner_for_create(A, "team-b")
    assert tenancy.owner_for_create(ADMIN, None) is None
    assert tenancy.owner_for_create(ADMIN, "team-b") == "team-b"
    assert tenancy.owner_for_create(None, "team-b") == "team-b"


def test_a_clone_stays_in_its_tenant() -> None:
    tenancy.clone_source_allowed("team-a", vol("src", "team-a"))
    tenancy.clone_source_allowed("team-a", vol("src", None))  # the admin's golden image
    with pytest.raises(InvalidArgument, match="another tenant"):
        tenancy.clone_source_allowed(None, vol("src", "team-a"))
    with pytest.raises(InvalidArgument):
        tenancy.clone_source_allowed("team-b", vol("src", "team-a"))


def test_usage_counts_provisioned_size_and_pending_expansions() -> None:
    vols = [vol("a1", "team-a", GiB), vol("a2", "team-a", 2 * GiB), vol("b1", "team-b", GiB)]

    def expand(v: str, size: int, state: OperationState) -> Operation:
        return Operation(
            id=f"op-{secrets.token_hex(2)}",
            kind=OperationKind.EXPAND,
            volume=v,
            args={"size_bytes": size},
            state=state,
        )

    assert tenancy.usage("team-a", vols) == 3 * GiB
    assert tenancy.usage("team-b", vols) == GiB
    assert tenancy.usage("team-c", vols) == 0
    ops = [
        expand("a1", 5 * GiB, OperationState.RUNNING),  # counts at its target
        expand("a1", 4 * GiB, OperationState.PENDING),  # the larger target wins
        expand("a2", 9 * GiB, OperationState.FAILED),  # finished: its volume's size counts
        expand("b1", 7 * GiB, OperationState.PENDING),  # another tenant's
    ]
    assert tenancy.usage("team-a", vols, ops) == 5 * GiB + 2 * GiB
    assert tenancy.pending_expansions(ops) == {"a1": 5 * GiB, "b1": 7 * GiB}


def test_the_quota_check_says_the_quota_and_the_use() -> None:
    t = Tenant(name="team-a", quota_bytes=10 * GiB)
    tenancy.check_quota(t, 6 * GiB, 4 * GiB, "volume x")  # exactly full: fine
    with pytest.raises(Unschedulable) as e:
        tenancy.check_quota(t, 6 * GiB, 4 * GiB + 4096, "volume x")
    msg = str(e.value)
    assert "tenant team-a's quota" in msg
    assert f"uses {6 * GiB} of {10 * GiB} bytes (6 GiB of 10 GiB)" in msg
    assert f"needs {4 * GiB + 4096} more" in msg
    tenancy.check_quota(Tenant(name="t"), 1 << 50, 1 << 50, "x")  # no quota
    tenancy.check_quota(t, 11 * GiB, 0, "x")  # over already, adding nothing: fine
    tenancy.check_quota(Tenant(name="t", quota_bytes=0), 0, 0, "x")
    with pytest.raises(Unschedulable):
        tenancy.check_quota(Tenant(name="t", quota_bytes=0), 0, 4096, "x")


# --- the service ----------------------------------------------------------------------------


@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    s = Sim(monkeypatch, nodes=3)
    await s.start()
    svc = s.service
    await svc.create_tenant(TenantCreate(name="team-a", quota_bytes=4 * GiB))
    await svc.create_tenant(TenantCreate(name="team-b"))
    await svc.create_volume(VolumeCreate(name="a-data", size_bytes=GiB), A)
    await svc.create_volume(VolumeCreate(name="b-data", size_bytes=GiB), B)
    await svc.create_volume(VolumeCreate(name="own", size_bytes=GiB), ADMIN)
    return s


async def test_a_tenant_sees_only_its_volumes(sim: Sim) -> None:
    svc = sim.service
    assert [v["name"] for v in await svc.volumes(A)] == ["a-data"]
    assert [v["name"] for v in await svc.volumes(A_READER)] == ["a-data"]
    assert [v["name"] for v in await svc.volumes(B)] == ["b-data"]
    assert sorted(v["name"] for v in await svc.volumes(ADMIN)) == ["a-data", "b-data", "own"]
    assert (await svc.volume("a-data", A))["tenant"] == "team-a"
    assert (await svc.volume("own", ADMIN))["tenant"] is None
    assert {r["volume"] for r in await svc.replicas(None, A)} == {"a-data"}
    mine, everyone = await svc.status(A), await svc.status(ADMIN)
    assert mine["volumes"]["total"] == 1 and everyone["volumes"]["total"] == 3
    assert mine["allocated_bytes"] * 3 == everyone["allocated_bytes"]  # 1 of 3 equal volumes
    assert mine["capacity_bytes"] == everyone["capacity_bytes"]


async def test_every_call_on_another_tenants_volume_is_not_found(sim: Sim) -> None:
    """Exactly the answer for a volume that does not exist: B learns nothing."""
    svc = sim.service
    await svc.create_snapshot("a-data", SnapshotCreate(name="s1"), A)
    calls = {
        "get": svc.volume("a-data", B),
        "replicas": svc.replicas("a-data", B),
        "attach": svc.attach("a-data", AttachRequest(node="node-1"), B),
        "detach": svc.detach("a-data", B),
        "delete": svc.delete_volume("a-data", False, B),
        "expand": svc.expand("a-data", ExpandRequest(size_bytes=2 * GiB), B),
        "scrub": svc.scrub("a-data", B),
        "recover-epoch": svc.recover_epoch("a-data", B),
        "snapshots": svc.snapshots("a-data", B),
        "snapshot": svc.create_snapshot("a-data", SnapshotCreate(name="s2"), B),
        "delete snapshot": svc.delete_snapshot("a-data", "s1", B),
        "revert": svc.revert("a-data", "s1", B),
        "clone": svc.create_volume(
            VolumeCreate(name="stolen", size_bytes=GiB, source={"volume": "a-data"}), B
        ),
    }
    for what, call in calls.items():
        with pytest.raises(NotFound) as e:
            await call
        assert "a-data" in str(e.value) and "not found" in str(e.value), what
    v = await svc.volume("a-data", ADMIN)
    assert v["attached_node"] is None and v["state"] != "deleting"  # nothing changed
    assert [s["name"] for s in await svc.snapshots("a-data", A)] == ["s1"]
    names = {v["name"] for v in await svc.volumes(ADMIN)}
    assert "stolen" not in names


async def test_operations_and_events_follow_their_volume(sim: Sim) -> None:
    svc = sim.service
    op = await svc.create_snapshot("a-data", SnapshotCreate(name="s1"), A)
    assert [o["id"] for o in await svc.operations(None, A)] == [op["id"]]
    assert await svc.operations(None, B) == []
    assert await svc.operations("a-data", B) == []
    assert (await svc.operation(op["id"], A))["id"] == op["id"]
    assert (await svc.operation(op["id"], ADMIN))["id"] == op["id"]
    with pytest.raises(NotFound, match=f"operation {op['id']} not found"):
        await svc.operation(op["id"], B)
    await sim.repo.add_event(sim_kind(), "orphan of a-data", node="node-1", volume="a-data")
    await sim.repo.add_event(sim_kind(), "a node event", node="node-1")

    def ours(events):  # type: ignore[no-untyped-def]  # the volumes' own (issue 20) aside
        return [e for e in events if e["kind"] == sim_kind()]

    assert [e["volume"] for e in ours(await svc.events(A))] == ["a-data"]
    assert {e["volume"] for e in await svc.events(A)} == {"a-data"}  # only its own volume's
    assert ours(await svc.events(B)) == []
    assert "a-data" not in {e["volume"] for e in await svc.events(B)}
    assert len(ours(await svc.events(ADMIN))) == 2
    # the volume filter does not widen what a tenant sees
    assert await svc.events(B, volume="a-data") == []


def sim_kind():  # type: ignore[no-untyped-def]
    from cargohold.control.model import EventKind

    return EventKind.ORPHAN_FOUND


async def test_creating_for_a_tenant(sim: Sim) -> None:
    svc = sim.service
    v = await svc.create_volume(VolumeCreate(name="for-b", size_bytes=GiB, tenant="team-b"), ADMIN)
    assert v["tenant"] == "team-b"
    assert "for-b" in {v["name"] for v in await svc.volumes(B)}
    with pytest.raises(PermissionDenied):
        await svc.create_volume(VolumeCreate(name="x", size_bytes=GiB, tenant="team-b"), A)
    with pytest.raises(NotFound, match="tenant team-z not found"):
        await svc.create_volume(VolumeCreate(name="x", size_bytes=GiB, tenant="team-z"), ADMIN)
    ghost = Identity(C, Role.CSI, "k8s-z", tenant="team-z")  # a certificate, no tenant record
    with pytest.raises(NotFound, match="tenant team-z not found"):
        await svc.create_volume(VolumeCreate(name="x", size_bytes=GiB), ghost)
    assert await svc.volumes(ghost) == []


async def test_the_quota_on_create_and_expand(sim: Sim) -> None:
    svc = sim.service  # team-a: quota 4 GiB, uses 1 GiB
    await svc.create_volume(VolumeCreate(name="a2", size_bytes=2 * GiB), A)
    with pytest.raises(Unschedulable, match=f"uses {3 * GiB} of {4 * GiB} bytes"):
        await svc.create_volume(VolumeCreate(name="a3", size_bytes=2 * GiB), A)
    assert "a3" not in {v["name"] for v in await svc.volumes(ADMIN)}
    await svc.create_volume(VolumeCreate(name="a3", size_bytes=GiB), A)  # exactly full
    with pytest.raises(Unschedulable, match="expanding volume a-data"):
        await svc.expand("a-data", ExpandRequest(size_bytes=GiB + 4096), A)
    await svc.set_quota("team-a", TenantQuota(quota_bytes=6 * GiB))
    await svc.expand("a-data", ExpandRequest(size_bytes=2 * GiB), A)
    # the pending expansion counts at its target: 2 + 2 + 1 = 5 of 6
    assert (await svc.tenant("team-a"))["used_bytes"] == 5 * GiB
    with pytest.raises(Unschedulable):
        await svc.create_volume(VolumeCreate(name="a4", size_bytes=2 * GiB), A)
    with pytest.raises(Unschedulable):  # a second expansion of the same volume, from 2 GiB
        await svc.expand("a-data", ExpandRequest(size_bytes=4 * GiB), A)
    await svc.expand("a-data", ExpandRequest(size_bytes=3 * GiB), A)  # 1 more: 6 of 6
    # team-b has no quota; the provider's volumes have none either
    await svc.create_volume(VolumeCreate(name="b2", size_bytes=100 * GiB), B)
    await svc.set_quota("team-a", TenantQuota(quota_bytes=GiB))  # below the use: taken
    t = await svc.tenant("team-a")
    assert t["quota_bytes"] == GiB and t["used_bytes"] == 6 * GiB and t["volumes"] == 3


async def test_concurrent_creates_do_not_overshoot_the_quota(sim: Sim) -> None:
    svc = sim.service
    await svc.set_quota("team-a", TenantQuota(quota_bytes=5 * GiB))  # 1 GiB used: 4 fit

    async def create(i: int) -> bool:
        try:
            await svc.create_volume(VolumeCreate(name=f"c{i}", size_bytes=GiB), A)
            return True
        except Unschedulable:
            return False

    made = await asyncio.gather(*(create(i) for i in range(10)))
    assert sum(made) == 4
    assert (await svc.tenant("team-a"))["used_bytes"] == 5 * GiB


async def test_without_the_tenant_guard_concurrent_creates_do_overshoot(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above can fail: with a guard that guards nothing, the same creates pass the
    check on the same reading and overshoot."""

    def no_guard(tenant: Tenant, rev: int) -> tuple[Compare, Put]:
        key = f"/test/{secrets.token_hex(4)}"
        return Compare(key, 0), Put(key, b"")

    monkeypatch.setattr(service_volumes, "tenant_guard", no_guard)
    svc = sim.service
    await svc.set_quota("team-a", TenantQuota(quota_bytes=5 * GiB))

    async def create(i: int) -> bool:
        try:
            await svc.create_volume(VolumeCreate(name=f"c{i}", size_bytes=GiB), A)
            return True
        except Unschedulable:
            return False

    made = await asyncio.gather(*(create(i) for i in range(10)))
    assert sum(made) > 4


async def test_tenant_records(sim: Sim) -> None:
    svc = sim.service
    assert [(t["name"], t["volumes"], t["used_bytes"]) for t in await svc.tenants()] == [
        ("team-a", 1, GiB),
        ("team-b", 1, GiB),
    ]
    with pytest.raises(WrongState, match="tenant team-a still has 1 volume"):
        await svc.delete_tenant("team-a")
    await svc.delete_volume("a-data", True, A)
    with pytest.raises(WrongState):  # being deleted still holds its space: still there
        await svc.delete_tenant("team-a")
    await sim.repo.delete_volume_records("a-data")
    gone = await svc.delete_tenant("team-a")
    assert gone["name"] == "team-a"
    with pytest.raises(NotFound):
        await svc.tenant("team-a")
    # the tenant gone, its identities can create nothing (and see nothing)
    with pytest.raises(NotFound):
        await svc.create_volume(VolumeCreate(name="late", size_bytes=GiB), A)


async def test_an_adopted_volume_is_given_back_to_its_tenant(sim: Sim) -> None:
    """Replicas do not record their tenant: the admin says it when adopting after a lost
    state store, and the tenant sees its volume again."""
    from cargohold.control.adoption import AdoptRequest
    from cargohold.control.model import Orphan

    for i in (1, 2):
        await sim.repo.put_orphan(
            Orphan(
                id=f"lost-r{i}",
                volume="lost",
                node=f"node-{i}",
                disk_path=f"/d/node-{i}",
                size_bytes=GiB,
                generation=5,
                seen=5,
                epoch=2,
                history=[[1, 1], [2, 3]],
                cluster_id=sim.repo.cluster_id,
            )
        )
    with pytest.raises(NotFound, match="tenant team-z not found"):
        await sim.service.adopt(AdoptRequest(volume="lost", tenant="team-z"))
    await sim.service.adopt(AdoptRequest(volume="lost", tenant="team-a"))
    assert (await sim.service.volume("lost", A))["tenant"] == "team-a"
    with pytest.raises(NotFound):
        await sim.service.volume("lost", B)
