"""Data-key rotation, the manager's side (service_keys.py, key_generations.py,
key_retention.py) on the simulated cluster: ``volume rekey --data-key`` puts a new
generation first and starts a rotation; the engine's assignment names it; the data-key
route gives the engine's agent every generation, newest first; the engine's ``rekey``
progress shows in ``volume get``; its "done" ends the rotation and drops older generations
unless a snapshot taken before still needs them (dropped when the last such snapshot
goes); clones, restores and backups carry the generations they need; refusals (409);
records from before rotation decode as generation 1."""

from __future__ import annotations

import base64
import json

import pytest

from cargohold.control import key_generations as gens
from cargohold.control.model import EventKind, Snapshot, VolumeEncryption, WrappedDataKey
from cargohold.control.requests import (
    DataKeyRequest,
    KeyChoice,
    SnapshotCreate,
    VolumeCreate,
)
from cargohold.control.service import AttachRequest
from cargohold.control.service_keys import ENCRYPTION_LABEL, encryption_label, encryption_of_label
from cargohold.errors import InvalidArgument, WrongState
from cargohold.keys.data_keys import WrappedKey, open_sealed
from cargohold.keys.providers import Keyring, MemoryProvider
from cargohold.security.identity import Identity, Role
from tests.unit.control.sim import Sim
from tests.unit.control.test_backups import backed_up, target_req
from tests.unit.control.test_backups import sim as backup_sim

__all__ = ["backup_sim"]
GiB = 1 << 30
CLUSTER = "c-" + "2" * 32
KEK = b"d" * 32
ROTATE = KeyChoice(data_key=True)


@pytest.fixture
async def sim(monkeypatch):  # type: ignore[no-untyped-def]
    s = Sim(monkeypatch, nodes=3, node_down_after=5)
    await s.start()
    s.service.keyring = Keyring([MemoryProvider({"default": KEK}, name="file")])
    return s


def clear(enc: VolumeEncryption, k: WrappedDataKey) -> bytes:
    blob = WrappedKey.from_b64("file", "default", k.wrapped_key).blob
    return open_sealed(KEK, blob, enc.id, "default").key


async def attached(sim: Sim, name: str = "vault") -> str:
    await sim.service.create_volume(VolumeCreate(name=name, size_bytes=GiB, encrypted=True))
    await sim.step(rounds=2)
    node = (await sim.repo.replicas(name))[0].node
    await sim.service.attach(name, AttachRequest(node=node))
    await sim.step(rounds=3)
    assert (await sim.repo.volume(name)).engine_runs
    return node


async def report(sim: Sim, node: str, name: str, **rekey: object) -> None:
    """The engine's ``rekey`` status, as its agent tags it, reaches the manager."""
    sim.nodes[node].engines[name].rekey = dict(rekey)
    await sim.step()


def test_records_from_before_rotation_are_generation_1() -> None:
    old = {"id": "ab" * 16, "provider": "file", "key_ref": "default", "wrapped_key": "QUJD"}
    enc = VolumeEncryption.model_validate({**old, "created": 5.0})
    assert [(k.generation, k.wrapped_key, k.created) for k in enc.keys] == [(1, "QUJD", 5.0)]
    assert gens.head(enc) == {1} and enc.rotation is None
    again = VolumeEncryption.model_validate_json(enc.model_dump_json())
    assert again == enc and again.wrapped_key == "QUJD"
    # an old backup label (one wrapped key) restores as generation 1
    assert [k.generation for k in encryption_of_label(json.dumps(old)).keys] == [1]
    with pytest.raises(InvalidArgument, match="label is broken"):
        encryption_of_label(json.dumps({**old, "keys": [{"generation": "x"}]}))


def test_a_rotation_request_needs_something_to_do() -> None:
    assert KeyChoice(data_key=True).key is None
    assert KeyChoice(data_key=True, key="k2").key == "k2"
    with pytest.raises(ValueError, match="data_key"):
        KeyChoice()
    with pytest.raises(ValueError, match="at most one"):
        KeyChoice(key="a", kms_key="b", data_key=True)


async def test_a_rotation_runs_online_and_its_done_drops_the_old_key(sim: Sim) -> None:
    node = await attached(sim)
    before = await sim.repo.volume("vault")
    assert before.encryption is not None
    old_key = clear(before.encryption, before.encryption.keys[0])

    v = await sim.service.rekey("vault", ROTATE)
    rot = v["encryption"]["rotation"]
    assert (
        rot["state"] == "running" and rot["generation"] == 2 and v["encryption"]["generation"] == 2
    )
    assert [g["generation"] for g in v["encryption"]["generations"]] == [2, 1]
    assert "wrapped_key" not in json.dumps(v) and before.encryption.wrapped_key not in json.dumps(v)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.wrapped_key == rec.keys[0].wrapped_key
    new_key = clear(rec, rec.keys[0])
    assert new_key != old_key and clear(rec, rec.keys[1]) == old_key
    kinds = [e.kind for e in await sim.repo.events()]
    assert EventKind.DATA_KEY_ROTATION_STARTED in kinds
    with pytest.raises(WrongState, match="still running"):
        await sim.service.rekey("vault", ROTATE)

    # the engine's assignment names the new generation and asks for a sweep
    await sim.step()
    ea = next(e for e in sim.nodes[node].last.engines if e.volume == "vault")  # type: ignore[union-attr]
    assert (ea.data_key_generation, ea.rekey) == (2, True)
    # the engine's agent gets both keys, newest first (and the old single field: the newest)
    epoch = (await sim.repo.volume("vault")).engine.epoch  # type: ignore[union-attr]
    got = await sim.service.data_key(
        "vault", DataKeyRequest(node=node, epoch=epoch), Identity(CLUSTER, Role.AGENT, node)
    )
    assert [k["generation"] for k in got["keys"]] == [2, 1]
    assert [base64.b64decode(k["data_key"]) for k in got["keys"]] == [new_key, old_key]
    assert base64.b64decode(got["data_key"]) == new_key and got["generation"] == 2

    # progress: the engine's sweep shows in volume get
    await report(
        sim,
        node,
        "vault",
        state="running",
        keys=2,
        generation=2,
        groups_done=3,
        groups_total=12,
        blocks_rewritten=150,
        error="",
    )
    rot = (await sim.service.volume("vault"))["encryption"]["rotation"]
    assert rot["state"] == "running" and rot["progress"] == 0.25 and rot["blocks_rewritten"] == 150
    # a "done" about the keys the engine had before is not this rotation's
    await report(sim, node, "vault", state="done", keys=1, generation=1)
    assert (await sim.repo.volume("vault")).encryption.rotation.state == "running"  # type: ignore[union-attr]
    await report(
        sim,
        node,
        "vault",
        state="done",
        keys=2,
        generation=2,
        groups_done=12,
        groups_total=12,
        blocks_rewritten=600,
        error="",
    )
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.rotation is not None and rec.rotation.state == "finished"
    assert gens.generations(rec) == [2] and rec.head_generations == [2]
    assert old_key not in {clear(rec, k) for k in rec.keys}
    kinds = [e.kind for e in await sim.repo.events()]
    assert EventKind.DATA_KEY_ROTATION_FINISHED in kinds and EventKind.DATA_KEY_DROPPED in kinds
    got = await sim.service.data_key(
        "vault", DataKeyRequest(node=node, epoch=epoch), Identity(CLUSTER, Role.AGENT, node)
    )
    assert [k["generation"] for k in got["keys"]] == [2]  # the next engine: only the new key
    await sim.step()
    ea = next(e for e in sim.nodes[node].last.engines if e.volume == "vault")  # type: ignore[union-attr]
    assert (ea.data_key_generation, ea.rekey) == (2, False)
    # a second rotation: generation 3
    v = await sim.service.rekey("vault", ROTATE)
    assert v["encryption"]["rotation"]["generation"] == 3


async def test_snapshots_keep_the_generations_their_blocks_are_under(sim: Sim) -> None:
    node = await attached(sim)
    await sim.service.create_snapshot("vault", SnapshotCreate(name="before"))
    await sim.step(rounds=2)
    assert (await sim.repo.snapshot("vault", "before")).key_generations == [1]
    await sim.service.rekey("vault", ROTATE)
    await sim.service.create_snapshot("vault", SnapshotCreate(name="during"))
    await sim.step(rounds=2)
    assert (await sim.repo.snapshot("vault", "during")).key_generations == [2, 1]
    await report(sim, node, "vault", state="done", keys=2, generation=2)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and gens.generations(rec) == [2, 1]  # kept: the snapshots need it
    assert rec.keys[1].kept_for == "snapshot before, snapshot during"
    v = await sim.service.volume("vault")
    assert v["encryption"]["generations"][1]["kept_for"] == "snapshot before, snapshot during"
    await sim.service.create_snapshot("vault", SnapshotCreate(name="after"))
    await sim.step(rounds=2)
    assert (await sim.repo.snapshot("vault", "after")).key_generations == [2]

    # a clone of a snapshot gets the generations it needs, of the volume its head's
    for clone, snap in (("c-before", "before"), ("c-after", "after"), ("c-now", None)):
        source = {"volume": "vault", **({"snapshot": snap} if snap else {})}
        await sim.service.create_volume(
            VolumeCreate(name=clone, size_bytes=GiB, source=source)  # type: ignore[arg-type]
        )
    c = {n: (await sim.repo.volume(n)).encryption for n in ("c-before", "c-after", "c-now")}
    assert gens.generations(c["c-before"]) == [1] and gens.generations(c["c-after"]) == [2]  # type: ignore[arg-type]
    assert gens.generations(c["c-now"]) == [2]  # type: ignore[arg-type]
    assert clear(c["c-before"], c["c-before"].keys[0]) == clear(rec, rec.keys[1])  # type: ignore[arg-type,union-attr]
    assert all(e is not None and e.rotation is None and e.id == rec.id for e in c.values())

    # the last snapshot that needs generation 1 goes: generation 1 goes
    await sim.service.delete_snapshot("vault", "before")
    await sim.step(rounds=2)
    assert gens.generations((await sim.repo.volume("vault")).encryption) == [2, 1]  # type: ignore[arg-type]
    await sim.service.delete_snapshot("vault", "during")
    await sim.step(rounds=2)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and gens.generations(rec) == [2]


def test_a_snapshot_of_unknown_generations_keeps_them_all() -> None:
    enc = VolumeEncryption(
        id="ab" * 16,
        provider="file",
        key_ref="default",
        keys=[WrappedDataKey(generation=g, wrapped_key="QUJD") for g in (3, 2, 1)],
        head_generations=[3],
    )
    kept, dropped = gens.prune(enc, [Snapshot(volume="v", name="old")])
    assert gens.generations(kept) == [3, 2, 1] and dropped == []
    kept, dropped = gens.prune(enc, [Snapshot(volume="v", name="s", key_generations=[2])])
    assert gens.generations(kept) == [3, 2] and dropped == [1]
    assert kept.wrapped_key == kept.keys[0].wrapped_key


async def test_refusals(sim: Sim) -> None:
    await sim.service.create_volume(VolumeCreate(name="plain", size_bytes=GiB))
    with pytest.raises(WrongState, match="not encrypted: there is no data key to rotate"):
        await sim.service.rekey("plain", ROTATE)
    # detached: the rotation waits for the next attach, and says so
    await sim.service.create_volume(VolumeCreate(name="vault", size_bytes=GiB, encrypted=True))
    await sim.step(rounds=2)
    v = await sim.service.rekey("vault", ROTATE)
    assert v["encryption"]["rotation"]["state"] == "waiting"
    events = [e.message for e in await sim.repo.events() if e.volume == "vault"]
    assert any("at the next attach" in m for m in events)

    def full(v):  # type: ignore[no-untyped-def]
        e = v.encryption
        keys = [
            WrappedDataKey(generation=9 - i, wrapped_key=e.keys[0].wrapped_key) for i in range(8)
        ]
        v.encryption = gens.with_keys(e, keys, rotation=None)
        return v

    await sim.repo.update_volume("vault", full)
    with pytest.raises(WrongState, match="keeps 8 data keys"):
        await sim.service.rekey("vault", ROTATE)
    await sim.service.delete_volume("vault", shred=True)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.keys == [] and rec.wrapped_key == ""  # every generation


async def test_backups_carry_every_generation_and_restores_get_them(backup_sim: Sim) -> None:
    sim = backup_sim
    sim.service.keyring = Keyring([MemoryProvider({"default": KEK}, name="file")])
    await sim.service.create_backup_target(target_req())
    await sim.service.create_volume(VolumeCreate(name="vault", size_bytes=GiB, encrypted=True))
    await sim.step(rounds=3)
    await sim.service.rekey("vault", ROTATE)
    b = await backed_up(sim, volume="vault")
    op = next(o for o in await sim.service.operations("vault") if o["kind"] == "backup")
    label = json.loads(op["args"]["labels"][ENCRYPTION_LABEL])
    src = (await sim.repo.volume("vault")).encryption
    assert src is not None and label == json.loads(encryption_label(src))
    assert [k["generation"] for k in label["keys"]] == [2, 1]
    assert label["wrapped_key"] == src.keys[0].wrapped_key  # what older readers take
    await sim.service.create_volume(
        VolumeCreate(name="back", size_bytes=GiB, source={"backup": b["id"]})  # type: ignore[arg-type]
    )
    got = (await sim.repo.volume("back")).encryption
    assert got is not None and [(k.generation, k.wrapped_key) for k in got.keys] == [
        (k.generation, k.wrapped_key) for k in src.keys
    ]
    assert got.rotation is None and got.id == src.id


async def test_a_revert_to_an_older_snapshot_brings_its_generations_back(sim: Sim) -> None:
    node = await attached(sim)
    await sim.service.create_snapshot("vault", SnapshotCreate(name="before"))
    await sim.step(rounds=2)
    await sim.service.rekey("vault", ROTATE)
    await report(sim, node, "vault", state="done", keys=2, generation=2)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.head_generations == [2] and gens.generations(rec) == [2, 1]
    await sim.service.detach("vault")
    await sim.step(rounds=3)
    await sim.service.revert("vault", "before")
    await sim.step(rounds=6)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.head_generations == [2, 1]  # the volume's blocks again
    await sim.service.delete_snapshot("vault", "before")
    await sim.step(rounds=6)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and gens.generations(rec) == [2, 1]  # still the volume's
    assert rec.keys[1].kept_for == "the volume's blocks"


async def test_a_kek_rewrap_during_a_rotation_rewraps_every_generation(sim: Sim) -> None:
    k2 = b"2" * 32
    sim.service.keyring = Keyring([MemoryProvider({"default": KEK, "k2": k2}, name="file")])
    node = await attached(sim)
    await sim.service.rekey("vault", ROTATE)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None
    before = [clear(rec, k) for k in rec.keys]
    await report(sim, node, "vault", state="running", keys=2, generation=2, groups_done=1,
                 groups_total=4)  # fmt: skip
    v = await sim.service.rekey("vault", KeyChoice(key="k2"))
    assert v["encryption"]["key_ref"] == "k2" and v["encryption"]["rotation"]["progress"] == 0.25
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.rotation is not None and rec.rotation.state == "running"
    after = [
        open_sealed(k2, WrappedKey.from_b64("file", "k2", k.wrapped_key).blob, rec.id, "k2").key
        for k in rec.keys
    ]
    assert after == before and rec.wrapped_key == rec.keys[0].wrapped_key


async def test_a_revert_during_a_rotation_outlives_a_done_from_before_it(sim: Sim) -> None:
    node = await attached(sim)
    await sim.service.create_snapshot("vault", SnapshotCreate(name="before"))
    await sim.step(rounds=2)
    await sim.service.rekey("vault", ROTATE)
    await sim.service.detach("vault")
    await sim.step(rounds=3)
    await sim.service.revert("vault", "before")
    await sim.step(rounds=6)
    rot = (await sim.repo.volume("vault")).encryption.rotation  # type: ignore[union-attr]
    assert rot is not None and rot.state == "running" and rot.reverted == [1]
    # a "done" that may have been seen before the revert: generation 1 stays the volume's
    await sim.service.attach("vault", AttachRequest(node=node))
    await sim.step(rounds=3)
    await report(sim, node, "vault", state="done", keys=2, generation=2)
    rec = (await sim.repo.volume("vault")).encryption
    assert rec is not None and rec.rotation is not None and rec.rotation.state == "finished"
    assert rec.head_generations == [2, 1]
    await sim.service.delete_snapshot("vault", "before")
    await sim.step(rounds=6)
    assert gens.generations((await sim.repo.volume("vault")).encryption) == [2, 1]  # type: ignore[arg-type]
