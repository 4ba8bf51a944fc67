"""Delta export of a snapshot (what an incremental backup reads), against a model.

The random histories of ``test_store_model`` (writes, gaps, zeroes and trims, snapshots,
deletions, reverts, expansion, reopening, rebuild marks) run on both stores; after every
step, for every snapshot S2 that exists and every snapshot S1 ever taken at a generation
not above S2's, taken while the replica was complete through its generation (the
engine's snapshots always are; deleted since, or on a branch a revert left), applying S1's content and
then ``export(since=S1's generation, snapshot=S2)`` gives exactly S2's content. That is the
rule an incremental backup stands on: the parent's content, plus the delta, is the child.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, rule

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import NotFound
from cargohold.store.base import DATA, ZERO, stream_end
from cargohold.store.memory_store import MemoryStore
from tests.unit.store.test_store_model import StoreMachine


def _apply_export(store, twin: MemoryStore, since: int, snapshot: str, max_bytes: int) -> None:
    off = 0
    while off < store.size:
        bufs = store.export(
            off, store.size - off, since=since, snapshot=snapshot, max_bytes=max_bytes
        )
        twin.import_stream(b"".join(bytes(b) for b in bufs))
        new_off = stream_end(bufs)
        assert new_off > off
        off = new_off


class SnapshotDeltaMachine(StoreMachine):
    kind = "file"

    def __init__(self) -> None:
        super().__init__()
        # every snapshot taken while the replica was complete (no gap: what the engine's
        # snapshots are) -> (generation, content, nblocks), deleted ones too
        self.taken: dict[str, tuple[int, dict[int, bytes], int]] = {}

    @rule()
    def snapshot(self) -> None:
        super().snapshot()
        name = f"s{self.counter}"
        info = next(s for s in self.store.snapshot_list() if s.name == name)
        if self.store.generation == self.store.seen:  # with a gap, newer blocks are in it
            self.taken[name] = (info.generation, dict(self.model), self.nblocks)

    @invariant()
    def snapshot_deltas_rebuild_the_snapshot(self) -> None:
        if not hasattr(self, "store"):
            return
        gens = {s.name: s.generation for s in self.store.snapshot_list()}
        size = self.store.size
        for name2, content2 in self.snaps.items():
            want = self._content(content2, self.nblocks)
            for name1, (g1, content1, _nb) in list(self.taken.items())[-5:]:
                if g1 == 0 or g1 > gens[name2]:
                    continue  # since 0 means "everything": the engine reads all (no parent)
                twin = MemoryStore(size)
                if name1 in self.snaps:  # the parent's full export, where it still exists
                    _apply_export(self.store, twin, 0, name1, 1 << 20)
                else:  # deleted since: its content, as the backup repository keeps it
                    for i, blk in content1.items():
                        twin.write(i * BLOCK_SIZE, blk)
                _apply_export(self.store, twin, g1, name2, 3 * BLOCK_SIZE)
                got = bytes(twin.read(0, size))
                assert got == want, f"{name1}@{g1} + delta of {name2}@{gens[name2]}"


class MemorySnapshotDeltaMachine(SnapshotDeltaMachine):
    kind = "memory"


_settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestFileSnapshotDelta = SnapshotDeltaMachine.TestCase
TestFileSnapshotDelta.settings = _settings
TestMemorySnapshotDelta = MemorySnapshotDeltaMachine.TestCase
TestMemorySnapshotDelta.settings = _settings


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_delta_of_a_snapshot_reads_its_chain_not_the_heads(tmp_path, kind):
    """Writes after the snapshot are not in its delta; zeroed and reverted-away blocks are
    ZERO extents; a missing snapshot is NotFound."""
    from cargohold.protocol import extent_stream as xs
    from cargohold.store.file_store import FileStore

    size = 32 * BLOCK_SIZE
    s = FileStore.create(str(tmp_path / "r"), size) if kind == "file" else MemoryStore(size)
    s.write(0, b"a" * 4 * BLOCK_SIZE)  # gen 1
    s.snapshot_create("base")
    g = s.generation
    s.write(8 * BLOCK_SIZE, b"b" * BLOCK_SIZE)  # in "next"
    s.write_zeroes(2 * BLOCK_SIZE, BLOCK_SIZE)  # zeroed in "next"
    s.snapshot_create("next")
    s.write(16 * BLOCK_SIZE, b"c" * BLOCK_SIZE)  # the head only
    _, extents = xs.decode(b"".join(bytes(b) for b in s.export(0, size, since=g, snapshot="next")))
    got = [(e.kind, e.lba, e.count) for e in extents]
    assert got == [(ZERO, 2, 1), (DATA, 8, 1)]
    # a revert to "base" then a snapshot: the block "next" wrote reads as zeros again
    s.snapshot_revert("base")
    s.snapshot_create("again")
    g2 = next(x.generation for x in s.snapshot_list() if x.name == "next")
    _, extents = xs.decode(
        b"".join(bytes(b) for b in s.export(0, size, since=g2, snapshot="again"))
    )
    kinds = {e.lba: e.kind for e in extents}
    assert kinds.get(8) == ZERO and kinds.get(2) == DATA and 16 in kinds  # over-approx is fine
    with pytest.raises(NotFound):
        s.export(0, size, since=g, snapshot="nope")
    s.close()
