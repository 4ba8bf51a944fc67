"""Standbys of encrypted volumes (docs/disaster-recovery.md, "Encrypted volumes"): the merge
of a newer backup's key generations into the standby's record (key_generations.py,
``merge_for_standby``, pure), and the follower doing it before each apply over the
simulated cluster with an in-memory twin of the target: the standby's record gets the
source's key record at create, every generation a later backup carries before its apply
starts, and a generation wrapped under a KEK this cluster lacks stops the apply with the
reason in the volume's error."""

from __future__ import annotations

import pytest

from cargohold.control import key_generations as gens
from cargohold.control.model import OperationKind, VolumeEncryption, WrappedDataKey
from cargohold.control.requests import StandbyCreate
from cargohold.control.service_keys import ENCRYPTION_LABEL, encryption_label
from cargohold.control.standby_follower import StandbyFollower
from cargohold.encryption import layout
from cargohold.errors import CargoholdError, InvalidArgument, NotFound
from cargohold.keys.data_keys import new_data_key
from cargohold.keys.providers import Keyring, MemoryProvider
from tests.unit.control.sim import Sim
from tests.unit.control.test_standby import run
from tests.unit.control.test_standby import sim as standby_sim

__all__ = ["standby_sim"]
GiB = 1 << 30
EID = "e" * 32


def enc(*g: int, ref: str = "default", eid: str = EID) -> VolumeEncryption:
    keys = [WrappedDataKey(generation=n, wrapped_key=f"w{n}-{ref}", created=n) for n in g]
    return VolumeEncryption(id=eid, provider="file", key_ref=ref, wrapped_key="", keys=keys)


def test_merge_adds_newer_generations_newest_first_without_duplicates() -> None:
    merged, added = gens.merge_for_standby(enc(2, 1), enc(4, 3, 2))
    assert gens.generations(merged) == [4, 3, 2, 1] and added == [4, 3]
    assert merged.wrapped_key == "w4-default" and merged.id == EID
    assert sorted(gens.head(merged)) == [1, 2, 3, 4]  # none dropped: a revert may need 1
    # the standby's own wrapping of a generation both hold wins; nothing new: unchanged
    same, added = gens.merge_for_standby(enc(2, 1), enc(2))
    assert same == enc(2, 1) and added == []


def test_a_label_without_generations_is_generation_one() -> None:
    old = VolumeEncryption(id=EID, provider="file", key_ref="default", wrapped_key="w1-default")
    assert gens.generations(old) == [1]
    merged, added = gens.merge_for_standby(old, enc(2, 1))
    assert gens.generations(merged) == [2, 1] and added == [2]
    assert merged.keys[1].wrapped_key == "w1-default"


def test_merge_refusals_and_another_kek() -> None:
    with pytest.raises(InvalidArgument, match="another volume's data"):
        gens.merge_for_standby(enc(1), enc(2, 1, eid="f" * 32))
    with pytest.raises(InvalidArgument, match="more than an engine takes"):
        gens.merge_for_standby(enc(*range(8, 0, -1)), enc(9))
    # the source rewrapped under another KEK: taken whole when it carries all the standby's
    merged, added = gens.merge_for_standby(enc(2, 1), enc(3, 2, 1, ref="kek2"))
    assert merged.key_ref == "kek2" and added == [3]
    assert [k.wrapped_key for k in merged.keys] == ["w3-kek2", "w2-kek2", "w1-kek2"]
    with pytest.raises(InvalidArgument, match="does not carry"):
        gens.merge_for_standby(enc(2, 1), enc(3, 2, ref="kek2"))


async def test_an_encrypted_standby_merges_each_backups_generations(standby_sim: Sim) -> None:
    sim = standby_sim
    mem = MemoryProvider({"default": b"k" * 32}, name="file")
    sim.service.keyring = Keyring([mem])
    src = await sim.service.new_encryption("default", None)
    twin = sim.twins.repos["s3://a/x"]  # type: ignore[attr-defined]
    size = layout.physical_size(GiB)

    def backup(e: VolumeEncryption, t: float) -> dict[str, object]:
        labels = {ENCRYPTION_LABEL: encryption_label(e)}
        return twin.add(volume="db", volume_id="u", size=size, created=t, labels=labels)

    backup(src, sim.clock.t - 100)
    v = await sim.service.create_standby(
        StandbyCreate(name="db-dr", target="site-a", source_volume="db")
    )
    assert v["size_bytes"] == GiB, v  # the logical size, the replicas hold the physical one
    f = StandbyFollower(sim.service)
    await run(sim, f)
    vol = await sim.repo.volume("db-dr")
    assert vol.encryption is not None and vol.encryption.id == src.id
    assert gens.generations(vol.encryption) == [1] and vol.standby is not None
    assert vol.standby.applies == 1, vol.standby
    # the source rotated its data key: the next apply brings generation 2 first
    w2 = mem.wrap(new_data_key(), "default", src.id)
    rotated = gens.with_keys(src, [WrappedDataKey(generation=2, wrapped_key=w2.b64), *src.keys])
    b2 = backup(rotated, sim.clock.t)
    sim.clock.t += 11
    await run(sim, f)
    vol = await sim.repo.volume("db-dr")
    assert vol.encryption is not None and gens.generations(vol.encryption) == [2, 1]
    assert vol.encryption.keys[0].wrapped_key == w2.b64 and vol.encryption.id == src.id
    assert vol.standby is not None and vol.standby.applied == b2["id"], vol.standby
    # a generation under a KEK this cluster lacks: the apply does not start, the error says so
    other = MemoryProvider({"default": b"z" * 32}, name="file")
    w3 = other.wrap(new_data_key(), "default", src.id)
    bad = gens.with_keys(rotated, [WrappedDataKey(generation=3, wrapped_key=w3.b64), *rotated.keys])
    b3 = backup(bad, sim.clock.t)
    restores = len(
        [o for o in await sim.repo.operations("db-dr") if o.kind is OperationKind.RESTORE]
    )
    sim.clock.t += 11
    await run(sim, f)
    vol = await sim.repo.volume("db-dr")
    assert vol.error.startswith("standby apply stopped: backup " + b3["id"]), vol.error
    assert vol.encryption is not None and gens.generations(vol.encryption) == [2, 1]
    assert vol.standby is not None and vol.standby.applied == b2["id"]
    sim.clock.t += 11
    await run(sim, f)  # tried again, still refused; the standby is left as it was
    ops = await sim.repo.operations("db-dr")
    after = [o for o in ops if o.kind is OperationKind.RESTORE]
    assert len(after) == restores
    assert not any(o.kind is OperationKind.SNAPSHOT_REVERT for o in ops)
    vol = await sim.repo.volume("db-dr")
    assert vol.standby is not None and not vol.standby.dirty and vol.standby.behind == 1
    assert vol.error.startswith("standby apply stopped: "), vol.error


async def test_create_refuses_without_the_kek(standby_sim: Sim) -> None:
    sim = standby_sim
    theirs = MemoryProvider({"default": b"q" * 32}, name="file")
    sim.service.keyring = Keyring([theirs])
    src = await sim.service.new_encryption("default", None)
    sim.service.keyring = Keyring([MemoryProvider({"default": b"k" * 32}, name="file")])
    twin = sim.twins.repos["s3://a/x"]  # type: ignore[attr-defined]
    labels = {ENCRYPTION_LABEL: encryption_label(src)}
    twin.add(volume="db", volume_id="u", size=layout.physical_size(GiB), labels=labels)
    with pytest.raises(CargoholdError):
        await sim.service.create_standby(
            StandbyCreate(name="db-dr", target="site-a", source_volume="db")
        )
    with pytest.raises(NotFound):
        await sim.repo.volume("db-dr")
