"""Repository.clones_of: the volumes made from one volume, found without parsing the others
(the console's volume page asks it with thousands of volumes in the store)."""

import asyncio

from cargohold.control.model import Volume, VolumeSource
from cargohold.control.repository import Repository
from cargohold.control.state import open_store


def test_only_the_clones_of_the_volume_are_returned():
    async def go() -> list[str]:
        repo = Repository(open_store("memory:"))
        vols = [
            Volume(name="db", size_bytes=1 << 30, replicas_wanted=1),
            Volume(
                name="db-2", size_bytes=1 << 30, replicas_wanted=1
            ),  # a name containing "db": not a clone
            Volume(
                name="a", size_bytes=1 << 30, replicas_wanted=1, source=VolumeSource(volume="db")
            ),
            Volume(
                name="b", size_bytes=1 << 30, replicas_wanted=1, source=VolumeSource(volume="db-2")
            ),
            Volume(
                name="c", size_bytes=1 << 30, replicas_wanted=1, labels={"from": "db"}
            ),  # mentions it only
            Volume(
                name="d",
                size_bytes=1 << 30,
                replicas_wanted=1,
                source=VolumeSource(volume="db", snapshot="s1"),
            ),
        ]
        for v in vols:
            await repo.create_volume(v, [])
        return sorted(v.name for v in await repo.clones_of("db"))

    assert asyncio.run(go()) == ["a", "d"]
