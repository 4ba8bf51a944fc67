"""A block that fails its check on a rebuild's source (after every replica lost power, the
engine's start in doubt keeps one source and rebuilds the others from it; the source may
hold a *lost* block: its record written back, its data page not). Its EXPORT failed on that
block and the rebuild never finished. Now (engine/rebuild.py ``LostBlocks``):

- the target's copy verifies and is the value the source's record names: it repairs the
  source, and every replica ends with it (``rebuild_source_repaired_blocks``);
- it fails on every replica: no value is made up; the rebuild finishes around it, the
  block stays failing everywhere and is reported (``rebuild_unreadable_blocks``);
- the target's copy verifies but is another value: which is right cannot be told, nothing
  is taken, the rebuild fails naming the block.

Real replica servers in this process (tests/unit/engine/test_start_doubt.py's cluster);
the lost block is made as a power loss makes it: the data page of a block whose record is
written is a hole (punched), so the block fails its check on read."""

from __future__ import annotations

import pytest

from cargohold.constants import BLOCK_SIZE
from cargohold.engine.replica_link import Mode
from cargohold.errors import ChecksumError
from cargohold.replica.client import ReplicaClient
from tests.unit.engine import test_start_doubt as doubt
from tests.unit.engine.test_start_doubt import SIZE, A, Cluster, _until, power_loss, written

cluster = doubt.cluster  # the fixture: three replica servers, a replica r<i> on each

B = b"b" * BLOCK_SIZE
SRC = b"s" * BLOCK_SIZE
LOST = 3  # the block lost


def lose(cl: Cluster, i: int, block: int) -> None:
    """Replica ``i``'s head keeps the record of ``block`` but its data page is a hole."""
    store = cl.servers[i].registry.get(f"r{i}").store
    store._chain[0].punch(block, 1)


async def read_block(cl: Cluster, i: int, epoch: int, block: int) -> bytes | None:
    c = await ReplicaClient.connect("127.0.0.1", cl.servers[i].port)
    try:
        await c.open(f"r{i}", epoch)
        try:
            return bytes(await c.read(block * BLOCK_SIZE, BLOCK_SIZE))
        except ChecksumError:
            return None
    finally:
        await c.close()


async def crashed(cl: Cluster, monkeypatch: pytest.MonkeyPatch, lost_on: list[int]) -> int:
    """Epoch 1 wrote blocks 0-7 and flushed; then block LOST got B on every replica above
    the flushed generation (as writes after the last FLUSH, which a power loss leaves above
    the generation), r0 saw the most (it becomes the source); every replica lost power and
    those of ``lost_on`` lost block LOST's data page. -> the flushed generation."""
    gen = await written(cl)
    for i in range(3):
        await cl.around(i, 1, LOST, B, gap=2)
    await cl.around(0, 1, 6, SRC, gap=3)  # r0 saw the most: the start's source
    for i in lost_on:
        lose(cl, i, LOST)
        assert await read_block(cl, i, 1, LOST) is None
    power_loss(monkeypatch, {"r0", "r1", "r2"})
    return gen


async def test_the_targets_copy_is_taken_into_the_source(cluster, monkeypatch):
    await crashed(cluster, monkeypatch, [0])
    vol = cluster.volume(2)
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.WO, Mode.WO]
    await _until(
        lambda: (
            all(lk.mode is Mode.RW for lk in vol.links)
            or any(lk.mode is Mode.ERR for lk in vol.links)
        )
    )
    assert all(lk.mode is Mode.RW for lk in vol.links), vol.status()["replicas"]
    assert vol.counters["rebuild_source_repaired_blocks"] == 1
    assert vol.counters["rebuild_unreadable_blocks"] == 0
    assert vol.robustness() == "healthy"
    await vol.close()
    want = bytearray(A * 8 + bytes(SIZE - 8 * BLOCK_SIZE))
    want[LOST * BLOCK_SIZE : (LOST + 1) * BLOCK_SIZE] = B
    want[6 * BLOCK_SIZE : 7 * BLOCK_SIZE] = SRC
    for i in range(3):
        _, data = await cluster.state(i, 3)
        assert data == want, f"r{i}"


async def test_a_block_no_replica_vouches_for_stays_failing_and_reported(cluster, monkeypatch):
    await crashed(cluster, monkeypatch, [0, 1, 2])
    vol = cluster.volume(2)
    await vol.start()
    await _until(
        lambda: (
            all(lk.mode is Mode.RW for lk in vol.links)
            or any(lk.mode is Mode.ERR for lk in vol.links)
        )
    )
    assert all(lk.mode is Mode.RW for lk in vol.links), vol.status()["replicas"]
    assert vol.counters["rebuild_unreadable_blocks"] == 2  # one per rebuilt replica
    assert vol.counters["rebuild_source_repaired_blocks"] == 0
    reports = [lk.rebuild for lk in vol.links[1:]]
    assert all(r["unreadable_blocks"] == 1 and r["unreadable"] == [LOST] for r in reports)
    await vol.close()
    for i in range(3):
        assert await read_block(cluster, i, 3, LOST) is None, f"r{i} made a value up"
        for b in (0, 6):
            assert await read_block(cluster, i, 3, b) == (SRC if b == 6 else A), (i, b)


async def test_a_target_holding_another_value_is_not_taken(cluster, monkeypatch):
    """The targets' copies verify but are not the value the source's record names (their
    leftover of the crash is another write): which is right cannot be told, so nothing is
    taken; the rebuilds fail naming the block, and the volume serves on from the source."""
    await crashed(cluster, monkeypatch, [0])
    for i in (1, 2):  # another value at block LOST on the targets, above the generation
        await cluster.around(i, 1, LOST, b"o" * BLOCK_SIZE, gap=1)
    vol = cluster.volume(2)
    await vol.start()
    await _until(lambda: all(lk.mode is Mode.ERR for lk in vol.links[1:]))
    for lk in vol.links[1:]:
        assert f"block {LOST} fails its check" in lk.error, lk.error
        assert "not the value the source's record names" in lk.error, lk.error
    assert vol.links[0].mode is Mode.RW
    await vol.write(0, memoryview(b"n" * BLOCK_SIZE), False)  # it serves on
    await vol.close()
    assert await read_block(cluster, 0, 3, LOST) is None  # nothing was made up
