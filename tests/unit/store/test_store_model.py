"""Model-based tests: random operation sequences on both stores, checked against a plain model.

The model is a dict of block -> bytes for the head and a copy per snapshot. After every
step the whole head, every snapshot and the delta since every remembered generation are
compared with it.
"""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cargohold.constants import BLOCK_SIZE
from cargohold.errors import InvalidArgument, NotFound
from cargohold.store.base import block_crcs
from cargohold.store.file_store import FileStore
from cargohold.store.memory_store import MemoryStore

BLOCKS = 48
ZERO = bytes(BLOCK_SIZE)


def block(tag: int, i: int) -> bytes:
    return bytes([tag]) * (BLOCK_SIZE - 2) + i.to_bytes(2, "little")


class StoreMachine(RuleBasedStateMachine):
    kind = "file"

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="cargohold-model-")
        self.nblocks = BLOCKS
        self.model: dict[int, bytes] = {}
        self.snaps: dict[str, dict[int, bytes]] = {}
        self.history: list[tuple[int, dict[int, bytes], int]] = []  # gen, content, nblocks
        self.counter = 0
        self.last_gen = 0
        self.gen = 0  # complete through
        self.seen = 0  # newest generation recorded

    @initialize()
    def make(self) -> None:
        size = self.nblocks * BLOCK_SIZE
        self.store = (
            FileStore.create(self.dir + "/r", size) if self.kind == "file" else MemoryStore(size)
        )

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _content(self, model: dict[int, bytes], nblocks: int) -> bytes:
        return b"".join(model.get(i, ZERO) for i in range(nblocks))

    def _remember(self) -> None:
        self.history.append((self.store.generation, dict(self.model), self.nblocks))
        self.history = self.history[-6:]

    # --- operations -----------------------------------------------------------------
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        lba = data.draw(st.integers(0, self.nblocks - 1))
        n = data.draw(st.integers(1, min(6, self.nblocks - lba)))
        self.counter += 1
        payload = b"".join(block(self.counter % 251 + 1, lba + i) for i in range(n))
        skip = data.draw(st.sampled_from([1, 1, 1, 1, 2, 5]))  # > 1: an engine's gap
        g = self.seen + skip
        explicit = skip > 1 or data.draw(st.booleans())
        self.store.write(
            lba * BLOCK_SIZE,
            payload,
            fua=data.draw(st.booleans()),
            generation=g if explicit else None,
        )
        self._advance(g)
        for i in range(n):
            self.model[lba + i] = payload[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
        self._remember()

    @rule(data=st.data(), trim=st.booleans())
    def zero(self, data: st.DataObject, trim: bool) -> None:
        lba = data.draw(st.integers(0, self.nblocks - 1))
        n = data.draw(st.integers(1, min(8, self.nblocks - lba)))
        (self.store.trim if trim else self.store.write_zeroes)(lba * BLOCK_SIZE, n * BLOCK_SIZE)
        self._advance(self.seen + 1)
        for i in range(n):
            self.model.pop(lba + i, None)
        self._remember()

    @rule()
    def snapshot(self) -> None:
        self.counter += 1
        name = f"s{self.counter}"
        info = self.store.snapshot_create(name, {"n": str(self.counter)})
        assert info.name == name and info.labels == {"n": str(self.counter)}
        self.snaps[name] = dict(self.model)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data())
    def delete_snapshot(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        self.store.snapshot_delete(name)
        del self.snaps[name]
        with pytest.raises(NotFound):
            self.store.snapshot_delete(name)

    @precondition(lambda self: self.snaps)
    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        self.store.snapshot_revert(name)
        self._advance(self.seen + 1)
        self.model = dict(self.snaps[name])
        self._remember()

    def _advance(self, g: int) -> None:
        if self.gen == self.seen and g == self.gen + 1:
            self.gen = g
        self.seen = g

    @rule(extra=st.integers(0, 3))
    def mark_current(self, extra: int) -> None:
        """What the engine does after a rebuild: complete through the newest (or later)."""
        self.store.mark_current(self.seen + extra)
        self.gen = self.seen = self.seen + extra

    @rule()
    def stale_generation_is_refused(self) -> None:
        with pytest.raises(InvalidArgument, match="not above the newest"):
            self.store.write(0, bytes(BLOCK_SIZE), generation=self.seen)
        with pytest.raises(InvalidArgument, match="below the newest"):
            self.store.mark_current(self.seen - 1)

    @precondition(lambda self: self.nblocks < 3 * BLOCKS)
    @rule(extra=st.integers(1, 16))
    def expand(self, extra: int) -> None:
        self.nblocks += extra
        self.store.expand(self.nblocks * BLOCK_SIZE)

    @precondition(lambda self: self.kind == "file")
    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = FileStore.open(self.dir + "/r")

    @rule(data=st.data())
    def export_import(self, data: st.DataObject) -> None:
        """A full export imported into an empty twin reads the same; so does a delta."""
        twin = MemoryStore(self.nblocks * BLOCK_SIZE)
        off = 0
        while off < self.store.size:
            bufs = self.store.export(
                off,
                self.store.size - off,
                max_bytes=data.draw(st.sampled_from([BLOCK_SIZE, 5 * BLOCK_SIZE, 1 << 20])),
            )
            blob = b"".join(bytes(b) for b in bufs)
            twin.import_stream(blob)
            from cargohold.store.base import stream_end

            new_off = stream_end(bufs)
            assert new_off > off
            off = new_off
        assert bytes(twin.read(0, twin.size)) == self._content(self.model, self.nblocks)

    # --- invariants ------------------------------------------------------------------
    @invariant()
    def head_matches(self) -> None:
        if not hasattr(self, "store"):
            return
        assert self.store.size == self.nblocks * BLOCK_SIZE
        got = bytes(self.store.read(0, self.store.size))
        assert got == self._content(self.model, self.nblocks)
        for i in range(0, self.nblocks, 5):  # one-block reads take their own (scalar) path
            assert bytes(self.store.read(i * BLOCK_SIZE, BLOCK_SIZE)) == self.model.get(i, ZERO)

    @invariant()
    def checksum_maps_match_the_content(self) -> None:
        """CHECKSUMS' source: per block the CRC32C of what a read returns, from the maps."""
        if not hasattr(self, "store"):
            return
        size = self.store.size
        want = block_crcs(self._content(self.model, self.nblocks))
        assert self.store.checksums(0, size).tolist() == want.tolist()
        for name, content in self.snaps.items():
            want = block_crcs(self._content(content, self.nblocks))
            assert self.store.checksums(0, size, name).tolist() == want.tolist(), name

    @invariant()
    def snapshots_match(self) -> None:
        if not hasattr(self, "store"):
            return
        listed = {s.name for s in self.store.snapshot_list()}
        assert listed == set(self.snaps)
        for name, content in self.snaps.items():
            got = bytes(self.store.read(0, self.store.size, snapshot=name))
            assert got == self._content(content, self.nblocks), name
            i = (len(name) * 7) % self.nblocks
            one = bytes(self.store.read(i * BLOCK_SIZE, BLOCK_SIZE, snapshot=name))
            assert one == content.get(i, ZERO), (name, i)

    @invariant()
    def generation_monotonic_and_deltas_cover(self) -> None:
        if not hasattr(self, "store"):
            return
        gen = self.store.generation
        assert (gen, self.store.seen) == (self.gen, self.seen)
        assert gen >= self.last_gen
        self.last_gen = gen
        for g, content, nb in self.history:
            changed = set()
            for off, length in self.store.changed_since(g):
                changed.update(range(off // BLOCK_SIZE, (off + length) // BLOCK_SIZE))
            for i in range(self.nblocks):
                was = content.get(i, ZERO) if i < nb else ZERO
                if self.model.get(i, ZERO) != was:
                    assert i in changed, f"block {i} changed since gen {g} but not reported"

    @invariant()
    def scrub_clean(self) -> None:
        if hasattr(self, "store"):
            assert self.store.scrub().bad == ()


class MemoryMachine(StoreMachine):
    kind = "memory"


_settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestFileStoreModel = StoreMachine.TestCase
TestFileStoreModel.settings = _settings
TestMemoryStoreModel = MemoryMachine.TestCase
TestMemoryStoreModel.settings = _settings
