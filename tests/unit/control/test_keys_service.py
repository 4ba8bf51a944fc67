"""The manager's side of encryption at rest (control/service_keys.py, service_volumes.py)
on the simulated cluster: an encrypted volume's sizes (logical shown, physical replicas and
engine), its key record (never the key), key delivery only to the engine's agent, a rewrap
under another KEK, a wrong or missing KEK refused with nothing stored, clones keeping the
key and id, expansion by whole groups, and crypto-shredding."""

from __future__ import annotations

import pytest

from cargohold.control.model import EventKind, keys
from cargohold.control.requests import DataKeyRequest, ExpandRequest, KeyChoice, VolumeCreate
from cargohold.control.service import AttachRequest
from cargohold.encryption import layout
from cargohold.errors import InvalidArgument, KeyRefused, KeyUnavailable, PermissionDenied
from cargohold.keys.data_keys import WrappedKey, open_sealed
from cargohold.keys.providers import Keyring, MemoryProvider
from cargohold.security.identity import Identity, Role
from tests.unit.control.sim import Sim

GiB = 1 << 30
CLUSTER = "c-" + "2" * 32
KEKS = {"default": b"d" * 32, "k2": b"2" * 32}


@pytest.fixture
async def sim(monkeypatch):  # type: ignore[no-untyped-def]
    s = Sim(monkeypatch, nodes=3, node_down_after=5)
    await s.start()
    s.provider = MemoryProvider(dict(KEKS), name="file")
    s.service.keyring = Keyring([s.provider])
    return s


def agent(node: str) -> Identity:
    return Identity(CLUSTER, Role.AGENT, node)


async def test_an_encrypted_volume_is_stored_at_its_physical_size(sim) -> None:  # type: ignore[no-untyped-def]
    want = GiB + 1000 * 4096  # rounded up to whole 256 KiB groups
    v = await sim.service.create_volume(
        VolumeCreate(name="sealed", size_bytes=want, encrypted=True)
    )
    logical = layout.logical_size_for(want)
    assert v["size_bytes"] == logical > want
    enc = v["encryption"]
    assert enc["provider"] == "file" and enc["key_ref"] == "default" and not enc["shredded"]
    assert enc["stored_bytes"] == layout.physical_size(logical)
    rec = await sim.repo.volume("sealed")
    assert rec.encryption is not None and rec.encryption.wrapped_key
    raw = b"".join(e.value for e in await sim.repo.store.range("/"))
    dek = open_sealed(
        KEKS["default"],
        WrappedKey.from_b64("file", "default", rec.encryption.wrapped_key).blob,
        rec.encryption.id,
        "default",
    )
    assert dek.key not in raw and dek.key.hex().encode() not in raw  # never in clear
    await sim.step(rounds=2)
    reps = await sim.repo.replicas("sealed")
    assert reps and {r.size_bytes for r in reps} == {layout.physical_size(logical)}
    node = reps[0].node
    await sim.service.attach("sealed", AttachRequest(node=node))
    await sim.step(rounds=3)
    rec = await sim.repo.volume("sealed")
    assert rec.engine is not None and rec.engine.encrypted
    ea = next(e for e in sim.nodes[node].last.engines if e.volume == "sealed")
    assert ea.encrypted and ea.encryption_id == rec.encryption.id
    assert ea.size_bytes == layout.physical_size(logical)

    # the key: to the agent of the engine's node, for its epoch; to nobody else
    req = DataKeyRequest(node=node, epoch=rec.engine.epoch)
    got = await sim.service.data_key("sealed", req, agent(node))
    import base64

    assert base64.b64decode(got["data_key"]) == dek.key
    assert got["encryption_id"] == rec.encryption.id
    other = next(n for n in sim.nodes if n != node)
    with pytest.raises(PermissionDenied):  # another node's agent, asking as itself
        await sim.service.data_key("sealed", DataKeyRequest(node=other, epoch=1), agent(other))
    with pytest.raises(PermissionDenied):  # an agent speaking for another node
        await sim.service.data_key("sealed", req, agent(other))
    for role in (Role.ADMIN, Role.OPERATOR, Role.CSI):
        with pytest.raises(PermissionDenied):
            await sim.service.data_key("sealed", req, Identity(CLUSTER, role, node))
    events = [e for e in await sim.repo.events() if e.kind is EventKind.DATA_KEY_ISSUED]
    assert len(events) == 1 and got["data_key"] not in events[0].message

    # expansion by whole groups: the replicas grow by ciphertext and tag blocks
    op = await sim.service.expand("sealed", ExpandRequest(size_bytes=2 * GiB + 4096))
    assert op["args"]["logical_size_bytes"] == layout.logical_size_for(2 * GiB + 4096)
    await sim.step(rounds=4)
    rec = await sim.repo.volume("sealed")
    assert rec.size_bytes == op["args"]["logical_size_bytes"]
    assert {r.size_bytes for r in await sim.repo.replicas("sealed")} == {rec.stored_bytes}


async def test_rekey_rewraps_the_same_data_key(sim) -> None:  # type: ignore[no-untyped-def]
    await sim.service.create_volume(VolumeCreate(name="sealed", size_bytes=GiB, encrypted=True))
    before = await sim.repo.volume("sealed")
    v = await sim.service.rekey("sealed", KeyChoice(key="k2"))
    after = await sim.repo.volume("sealed")
    assert v["encryption"]["key_ref"] == "k2" and after.encryption.id == before.encryption.id
    assert after.encryption.wrapped_key != before.encryption.wrapped_key
    old = open_sealed(
        KEKS["default"],
        WrappedKey.from_b64("f", "d", before.encryption.wrapped_key).blob,
        before.encryption.id,
        "default",
    )
    new = open_sealed(
        KEKS["k2"],
        WrappedKey.from_b64("f", "k", after.encryption.wrapped_key).blob,
        after.encryption.id,
        "k2",
    )
    assert old.key == new.key
    with pytest.raises(KeyUnavailable, match="no key-encryption key 'k3'"):
        await sim.service.rekey("sealed", KeyChoice(key="k3"))
    sim.provider.keks["k2"] = b"x" * 32  # another key under the old name: refused
    with pytest.raises(KeyRefused):
        await sim.service.rekey("sealed", KeyChoice(key="default"))
    assert (await sim.repo.volume("sealed")).encryption == after.encryption  # unchanged


async def test_a_missing_kek_stores_nothing(sim) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyUnavailable, match="'nope'"):
        await sim.service.create_volume(
            VolumeCreate(name="sealed", size_bytes=GiB, encrypted=True, key="nope")
        )
    with pytest.raises(KeyUnavailable, match="provider 'kms' is not configured"):
        await sim.service.create_volume(
            VolumeCreate(name="sealed", size_bytes=GiB, encrypted=True, kms_key="alias/x")
        )
    with pytest.raises(InvalidArgument, match="key and kms_key"):
        await sim.service.create_volume(VolumeCreate(name="sealed", size_bytes=GiB, key="k2"))
    assert await sim.repo.store.range(keys.VOLUMES) == []
    assert await sim.repo.store.range(keys.REPLICAS) == []


async def test_clones_keep_the_key_and_shredding_ends_it(sim) -> None:  # type: ignore[no-untyped-def]
    from cargohold.control.model import VolumeSource

    await sim.service.create_volume(VolumeCreate(name="plain", size_bytes=GiB))
    await sim.service.create_volume(VolumeCreate(name="sealed", size_bytes=GiB, encrypted=True))
    await sim.step(rounds=3)
    with pytest.raises(InvalidArgument, match="not encrypted"):
        await sim.service.create_volume(
            VolumeCreate(
                name="c0", size_bytes=GiB, encrypted=True, source=VolumeSource(volume="plain")
            )
        )
    c = await sim.service.create_volume(
        VolumeCreate(name="c1", size_bytes=GiB, source=VolumeSource(volume="sealed"))
    )
    src = await sim.repo.volume("sealed")
    assert c["encryption"]["id"] == src.encryption.id
    assert (await sim.repo.volume("c1")).encryption.wrapped_key == src.encryption.wrapped_key
    c2 = await sim.service.create_volume(
        VolumeCreate(name="c2", size_bytes=GiB, key="k2", source=VolumeSource(volume="sealed"))
    )
    assert c2["encryption"]["id"] == src.encryption.id and c2["encryption"]["key_ref"] == "k2"
    await sim.step(rounds=4)

    v = await sim.service.delete_volume("sealed", shred=True)
    assert v["encryption"]["shredded"] and v["state"] == "deleting"
    rec = await sim.repo.volume("sealed")
    assert rec.encryption.wrapped_key == "" and rec.encryption.shredded_at
    assert await sim.service.shredded(rec.encryption.id) is not None
    kinds = [e.kind for e in await sim.repo.events() if e.volume == "sealed"]
    assert EventKind.VOLUME_SHREDDED in kinds
    with pytest.raises(KeyUnavailable, match="destroyed"):
        await sim.service.unwrap("sealed", rec.encryption)
    with pytest.raises(Exception, match="not encrypted"):
        await sim.service.delete_volume("plain", shred=True)
