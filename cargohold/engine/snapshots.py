"""Snapshots of a replicated volume, taken, listed, deleted and reverted through its engine.
Called by the control API.

A snapshot must be the same point in time on every replica: new mutations are held, the
ones in flight are answered, then every current replica takes the snapshot, then mutations
resume. A revert is a mutation (it changes what every block reads): it gets the engine's
next generation, like a write, so the replicas keep agreeing on generations. Neither runs
while a replica is being rebuilt (its history is incomplete): that answers Busy.
"""

from __future__ import annotations

from typing import Any

from cargohold.engine.replica_link import Mode
from cargohold.engine.volume import Volume
from cargohold.errors import Busy, NotFound, ReplicaIOError
from cargohold.replica.client import ReplicaClient


def _no_rebuild(vol: Volume, what: str) -> None:
    if any(link.mode is Mode.WO for link in vol.links):
        raise Busy(f"volume {vol.name}: a rebuild is running; {what} after it")


async def create(vol: Volume, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    vol._check_usable()
    _no_rebuild(vol, "snapshot")
    await vol._hold()
    try:
        done = await vol.broadcast(lambda c: c.snapshot_create(name, labels or {}))
    finally:
        vol._release()
    return done[0]


async def listing(vol: Volume) -> list[dict[str, Any]]:
    for link in vol._readers():
        assert link.client is not None
        return await link.client.snapshot_list()
    raise ReplicaIOError(f"volume {vol.name}: no current replica")


async def delete(vol: Volume, name: str) -> None:
    """On every replica of the write set; one that never had it is fine."""
    vol._check_usable()

    async def one(client: ReplicaClient) -> bool:
        await client.snapshot_delete(name)
        return True

    done = await vol.broadcast(one, tolerate=(NotFound,))  # None where it was not found
    if done and not any(done):
        raise NotFound(f"volume {vol.name}: no snapshot named {name!r}")


async def revert(vol: Volume, name: str) -> None:
    vol._check_usable()
    _no_rebuild(vol, "revert")
    await vol._hold()
    try:
        vol.gen += 1
        gen = vol.gen
        await vol.broadcast(lambda c: c.snapshot_revert(name, generation=gen))
        for link in vol.write_set():
            link.generation = gen
    finally:
        vol._release()
