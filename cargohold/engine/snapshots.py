"""Snapshots of a replicated volume, taken, listed, deleted and reverted through its engine.
Called by the control API.

A snapshot must be the same point in time on every replica: new mutations are held, the
ones in flight are answered, then every current replica takes the snapshot, then mutations
resume. A revert is a mutation (it changes what every block reads): it gets the engine's
next generation, like a write, so the replicas keep agreeing on generations. Neither runs
while a replica is being rebuilt (its history is incomplete): that answers Busy.

Create and delete may be asked for again after the engine died in the middle of them (the
agent retries the operation on the restarted engine): a delete is done where the snapshot
still exists; a create that finds the snapshot on every replica at the same generation
answers AlreadyExists (done already), and one that finds it on some replicas only (or at
different points) deletes those and takes it again on all — never a snapshot that exists
on part of the replicas.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cargohold.engine import faults, holds
from cargohold.engine.replica_link import Mode, ReplicaLink
from cargohold.engine.volume import Volume
from cargohold.errors import AlreadyExists, Busy, NotFound, ReplicaIOError
from cargohold.replica.client import ReplicaClient


def _no_rebuild(vol: Volume, what: str) -> None:
    if any(link.mode is Mode.WO for link in vol.links):
        raise Busy(f"volume {vol.name}: a rebuild is running; {what} after it")


log = logging.getLogger("cargohold.engine")


async def _existing(links: list[ReplicaLink], name: str) -> list[dict[str, Any] | None]:
    """Snapshot ``name`` as each replica has it (None: it has not, or could not say)."""

    async def one(link: ReplicaLink) -> dict[str, Any] | None:
        assert link.client is not None
        return next((s for s in await link.client.snapshot_list() if s["name"] == name), None)

    found = await asyncio.gather(*(one(link) for link in links), return_exceptions=True)
    return [f if isinstance(f, dict) else None for f in found]


async def create(
    vol: Volume, name: str, labels: dict[str, str] | None = None, hold: str | None = None
) -> dict[str, Any]:
    """``hold``: a group snapshot's hold (holds.py) to take it inside, instead of holding
    the volume's writes for this snapshot alone."""
    vol.check_usable()
    _no_rebuild(vol, "snapshot")
    async with vol.hold() if hold is None else holds.inside(vol, hold):
        try:
            targets = vol.write_set()
            have = await _existing(targets, name)
            infos = [h for h in have if h is not None]
            if len(infos) == len(targets) and len({h.get("generation") for h in infos}) == 1:
                # on every replica at one point: taken already (the manager counts that as the
                # success of a retried create)
                raise AlreadyExists(f"volume {vol.name}: snapshot {name!r} already exists")
            if infos:  # a crash left it on some replicas only, or at different points
                log.warning(
                    "volume %s: snapshot %s exists on %d of %d replicas: taking it again on all",
                    vol.name,
                    name,
                    len(infos),
                    len(targets),
                )
                partial = [link for link, h in zip(targets, have, strict=True) if h is not None]
                await vol.broadcast(
                    lambda c: c.snapshot_delete(name), partial, tolerate=(NotFound,)
                )
            first = targets[0].client if targets else None

            async def take(client: ReplicaClient) -> dict[str, Any]:
                if client is not first:
                    await faults.pause("SNAPSHOT")
                return await client.snapshot_create(name, labels or {})

            done = await vol.broadcast(take, targets)
        finally:
            vol.local.changed_layout()  # a new head: local reads reopen before writes resume
    return done[0]


async def listing(vol: Volume) -> list[dict[str, Any]]:
    for link in vol.readers():
        assert link.client is not None
        return await link.client.snapshot_list()
    raise ReplicaIOError(f"volume {vol.name}: no current replica")


async def delete(vol: Volume, name: str) -> None:
    """On every replica of the write set; one that never had it is fine."""
    vol.check_usable()
    first = next((link.client for link in vol.write_set()), None)

    async def one(client: ReplicaClient) -> bool:
        if client is not first:
            await faults.pause("SNAPSHOT")
        await client.snapshot_delete(name)
        return True

    with vol.local.paused():  # the replicas fold layers online meanwhile
        done = await vol.broadcast(one, tolerate=(NotFound,))  # None where it was not found
    if done and not any(done):
        raise NotFound(f"volume {vol.name}: no snapshot named {name!r}")


async def revert(vol: Volume, name: str) -> None:
    vol.check_usable()
    _no_rebuild(vol, "revert")
    async with vol.hold():
        vol.gen += 1
        gen = vol.gen
        with vol.local.paused():
            await vol.broadcast(lambda c: c.snapshot_revert(name, generation=gen))
        for link in vol.write_set():
            link.generation = gen
