"""A block that fails its check on a rebuild's source (after every replica lost power, the
engine's start in doubt keeps one source and rebuilds the others from it; the source may
hold a *lost* block: its record written back, its data page not). Its EXPORT failed on that
block and the rebuild never finished. Now (engine/rebuild.py ``LostBlocks``):

- the target's copy verifies and is the value the source's record names: it repairs the
  source, and every replica ends with it (``rebuild_source_repaired_blocks``);
- it fails on every replica: no value is made up; the rebuild finishes around it, the
  block stays failing everywhere and is reported (``rebuild_unreadable_blocks``);
- the target's copy verifies but is another value: taken into the source (IMPORT) only
  when both lost power and the target was as complete as the source at its OPEN (either
  value is then one the volume may hold); from a target that was behind, never: that
  rebuild fails naming the block.

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


async def crashed(
    cl: Cluster,
    monkeypatch: pytest.MonkeyPatch,
    lost_on: list[int],
    values: dict[int, bytes] | None = None,
) -> int:
    """Epoch 1 wrote blocks 0-7 and flushed; then block LOST got B on every replica above
    the flushed generation (as writes after the last FLUSH, which a power loss leaves above
    the generation), r0 saw the most (it becomes the source); every replica lost power and
    those of ``lost_on`` lost block LOST's data page. ``values``: another value of block LOST
    on some replicas, at the same generation (so no record of it is newer than another's and
    the start's merge keeps the source's). -> the flushed generation."""
    gen = await written(cl)
    for i in range(3):
        await cl.around(i, 1, LOST, (values or {}).get(i, B), gap=2)
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


async def test_after_a_power_loss_of_both_another_value_is_taken(cluster, monkeypatch):
    """The targets' copies verify but are another value than the source's record names
    (their leftover of the crash is another write above the generation): both replicas
    lost power and the targets were as complete as the source, so either value is one the
    volume may hold after the crash; the target's is taken into the source (IMPORT) and
    every replica ends with it."""
    # another value at block LOST on the targets, at the generation of the source's record
    # (a newer record would be the start's merge's to take, before any rebuild)
    await crashed(cluster, monkeypatch, [0], values={1: b"o" * BLOCK_SIZE, 2: b"o" * BLOCK_SIZE})
    vol = cluster.volume(2)
    await vol.start()
    assert [lk.mode for lk in vol.links] == [Mode.RW, Mode.WO, Mode.WO]
    await _until(lambda: all(lk.mode is not Mode.WO for lk in vol.links))
    assert all(lk.mode is Mode.RW for lk in vol.links), vol.status()["replicas"]
    # both rebuilds may take it, one after the other (each a value the volume may hold;
    # the verify then makes the first target equal to the source again)
    assert vol.counters["merged_blocks"] == 0  # the rebuild's rule took it, not the merge
    assert vol.counters["rebuild_source_repaired_blocks"] >= 1
    assert sum(lk.rebuild.get("source_taken_other_blocks", 0) for lk in vol.links) >= 1
    await vol.close()
    for i in range(3):
        assert await read_block(cluster, i, 3, LOST) == b"o" * BLOCK_SIZE, f"r{i}"


async def test_a_target_behind_the_source_gives_nothing_but_its_recorded_value(
    cluster, monkeypatch
):
    """r1 was behind (an engine of epoch 2 went on with r0 and r2 only): after the power
    loss it is not current, and its copy of a block failing on the source, another value,
    may be older than what the volume held: it is not taken, r1's rebuild fails naming the
    block. (r2, current with the source, holds the block's value below its generation: its
    rebuild does not read it, and the engine's reads repair the source from it.)"""
    gen = await written(cluster)
    for i in range(3):
        await cluster.around(i, 1, LOST, B, gap=2)
    two = Cluster(cluster.servers)
    two.specs = [cluster.specs[0], cluster.specs[2]]
    vol = two.volume(2)
    await vol.start()
    await _until(lambda: all(lk.mode is Mode.RW for lk in vol.links))
    await vol.write(7 * BLOCK_SIZE, memoryview(SRC), False)
    await vol.flush()
    await vol.close()
    await cluster.around(1, 1, LOST, b"o" * BLOCK_SIZE, gap=1)  # r1's own, older one
    await cluster.around(0, 2, 6, SRC, gap=3)  # r0 saw the most: the source
    lose(cluster, 0, LOST)
    power_loss(monkeypatch, {"r0", "r1", "r2"})
    vol = cluster.volume(3)
    await vol.start()
    assert vol.links[0].mode is Mode.RW and vol.links[1].generation < gen + 4
    await _until(lambda: all(lk.mode is not Mode.WO for lk in vol.links))
    r1, r2 = vol.links[1], vol.links[2]
    assert r1.mode is Mode.ERR and f"block {LOST} fails its check" in r1.error, r1.error
    assert "not the value the source's record names" in r1.error, r1.error
    assert r2.mode is Mode.RW, r2.error
    assert vol.counters["rebuild_source_repaired_blocks"] == 0
    await vol.close()
    assert await read_block(cluster, 0, 4, LOST) is None  # r1's older value not taken
    assert await read_block(cluster, 2, 4, LOST) == B
