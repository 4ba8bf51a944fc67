"""Backups of encrypted volumes in the manager (service_backups.py, service_keys.py) with
the in-memory repository twin: the backup carries the volume's key record (wrapped, never
clear) in its repository labels; a restore gives the new volume the same data key and
encryption id, at the physical size; after ``volume delete --shred`` the restore is
refused, saying the key is gone."""

from __future__ import annotations

import json

import pytest

from cargohold.control.requests import VolumeCreate
from cargohold.control.service_keys import ENCRYPTION_LABEL
from cargohold.encryption import layout
from cargohold.errors import KeyUnavailable
from cargohold.keys.providers import Keyring, MemoryProvider
from tests.unit.control.sim import Sim
from tests.unit.control.test_backups import backed_up, sim, target_req

__all__ = ["sim"]  # the fixture, shared with test_backups.py
GiB = 1 << 30


async def test_backups_carry_the_wrapped_key_and_shredding_ends_restores(sim: Sim) -> None:
    sim.service.keyring = Keyring([MemoryProvider({"default": b"d" * 32}, name="file")])
    await sim.service.create_backup_target(target_req())
    await sim.service.create_volume(VolumeCreate(name="vault", size_bytes=GiB, encrypted=True))
    await sim.step(rounds=3)
    src = await sim.repo.volume("vault")
    assert src.encryption is not None
    b = await backed_up(sim, volume="vault")
    op = next(o for o in await sim.service.operations("vault") if o["kind"] == "backup")
    label = json.loads(op["args"]["labels"][ENCRYPTION_LABEL])
    assert label["wrapped_key"] == src.encryption.wrapped_key and label["id"] == src.encryption.id
    assert ENCRYPTION_LABEL not in b["labels"]  # the user's labels stay the user's
    # the repository holds the stored volume; the record says the size users see, which
    # is what a restore gets by default (it used to grow by 1/64 with each restore)
    assert b["info"]["size"] == layout.physical_size(GiB) and b["size_bytes"] == GiB, b

    v = await sim.service.create_volume(
        VolumeCreate(name="back", size_bytes=GiB, source={"backup": b["id"]})
    )
    assert v["encryption"]["id"] == src.encryption.id
    restored = await sim.repo.volume("back")
    assert restored.encryption is not None
    assert restored.encryption.wrapped_key == src.encryption.wrapped_key
    assert {r.size_bytes for r in await sim.repo.replicas("back")} <= {
        0,
        layout.physical_size(GiB),
    }
    with pytest.raises(Exception, match="plain volume"):
        data = await backed_up(sim, volume="data")
        await sim.service.create_volume(
            VolumeCreate(name="x", size_bytes=GiB, encrypted=True, source={"backup": data["id"]})
        )

    await sim.service.delete_volume("vault", shred=True)
    with pytest.raises(KeyUnavailable, match="cannot be restored: the data key of volume vault"):
        await sim.service.create_volume(
            VolumeCreate(name="again", size_bytes=GiB, source={"backup": b["id"]})
        )
