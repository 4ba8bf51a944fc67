"""An encrypted write's tag block and data in one round trip, against a real replica
server: the encrypting device over the engine's ``Volume`` queues both back to back on
every replica (one WRITE_BATCH frame each), and a replica whose tag write fails never gets
the data (the server stops the session's mutations at the failed one): it is dropped and
its copy of the block keeps its old content, while the others hold the new content, which
a new engine reads back (docs/encryption.md, "Crashes")."""

from __future__ import annotations

import os

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK
from cargohold.engine.replica_link import Mode, ReplicaSpec
from cargohold.engine.volume import Volume
from cargohold.frontend.encrypted_device import EncryptedDevice
from cargohold.replica.client import ReplicaClient
from cargohold.settings import EngineSettings

KEY = bytes(range(7, 39))
VID = bytes(range(16))
LOGICAL = 4 * layout.GROUP_BYTES


async def _counters(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    c = await ReplicaClient.connect("127.0.0.1", server.port)
    try:
        return (await c.listing())["server"]["counters"]
    finally:
        await c.close()


async def _volume(server, name: str) -> Volume:  # type: ignore[no-untyped-def]
    specs = []
    for i in range(3):
        c = await ReplicaClient.connect("127.0.0.1", server.port)
        await c.create(f"{name}-{i}", layout.physical_size(LOGICAL))
        await c.close()
        specs.append(ReplicaSpec.parse(f"{name}-{i}@127.0.0.1:{server.port}"))
    vol = Volume(name, specs, 1, EngineSettings(plaintext=True, local_reads=False, min_replicas=2))
    await vol.start()
    return vol


async def test_tag_and_data_go_together_in_one_frame_per_replica(server):
    vol = await _volume(server, "one")
    try:
        assert all(link.client.stop_on_failure for link in vol.links)
        dev = EncryptedDevice(vol, BlockCipher(KEY, VID), 1)
        before = await _counters(server)
        plain = os.urandom(BLOCK)
        await dev.write(5 * BLOCK, memoryview(plain), False)
        after = await _counters(server)
        # one frame per replica holding the tag block then the data: 3 frames, 6 writes
        assert after["write_batches"] - before.get("write_batches", 0) == 3
        assert after["batched_writes"] - before.get("batched_writes", 0) == 6
        assert vol.gen == 2 and all(link.generation == 2 for link in vol.links)
        assert bytes(await dev.read(5 * BLOCK, BLOCK)) == plain
        assert dev.counters["tag_block_writes"] == 1
    finally:
        await vol.close()


async def test_a_replica_whose_tag_write_fails_never_gets_the_data(server):
    vol = await _volume(server, "cut")
    try:
        dev = EncryptedDevice(vol, BlockCipher(KEY, VID), 1)
        old = os.urandom(BLOCK)
        await dev.write(0, memoryview(old), False)  # generations 1 (tags) and 2 (data)
        bad = vol.links[1]
        # the next tag write (generation 3) is refused by replica 1 alone: something else
        # numbered 3 there first ("not above" what it has seen). Its data, generation 4,
        # would be accepted by a server that lets a failed write fail alone.
        other = await ReplicaClient.connect("127.0.0.1", server.port)
        await other.open(bad.spec.id, 1)
        far = layout.data_block(3 * layout.GROUP) * BLOCK
        await other.write(far, bytes(BLOCK), generation=3)
        new = os.urandom(BLOCK)
        await dev.write(0, memoryview(new), False)  # two of three replicas: acknowledged
        assert bad.mode is Mode.ERR and "not above" in (bad.error or "")
        assert [link.mode for link in vol.links] == [Mode.RW, Mode.ERR, Mode.RW]
        info = await other.info()
        assert info["seen"] == 3  # neither the tag block (3) nor the data (4) applied
        phys = layout.data_block(0) * BLOCK
        tags = layout.tag_block(0) * BLOCK
        stale = bytes(await other.read(phys, BLOCK))
        good = [bytes(await vol.links[k].client.read(phys, BLOCK)) for k in (0, 2)]
        assert good[0] == good[1] != stale  # the new ciphertext on the two others only
        # the replica that missed both still reads its old content, consistently
        copy = BlockCipher(KEY, VID)
        entry = bytes(await other.read(tags, BLOCK))[: layout.ENTRY]
        assert copy.open_block(0, stale, entry) == old
        await other.close()
        fresh = EncryptedDevice(vol, BlockCipher(KEY, VID), 2)
        assert bytes(await fresh.read(0, BLOCK)) == new
    finally:
        await vol.close()
