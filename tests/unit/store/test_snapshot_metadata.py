"""Changed-block metadata from the store's own change tracking (what the engine's
``snapshot-metadata`` op and CSI GetMetadataDelta / GetMetadataAllocated serve): for random
histories of writes, zeroes and trims around two snapshots, on the file store,

- the delta (``changed_since(gen(s1), snapshot=s2)``) covers every block whose content
  differs between s1 and s2 (read both, compare block by block), and holds only blocks
  that were written, zeroed or trimmed after s1 (nothing unchanged is reported);
- the allocated runs of a snapshot (``extents(..., snapshot)`` DATA) are exactly the blocks
  that history left data in, and the head's later writes change neither answer.
"""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.constants import BLOCK_SIZE
from cargohold.store.base import DATA
from cargohold.store.file_store import FileStore

BLOCKS = 64
SIZE = BLOCKS * BLOCK_SIZE

op = st.tuples(
    st.sampled_from(["write", "write", "write", "zero", "trim"]),
    st.integers(0, BLOCKS - 1),
    st.integers(1, 6),
)


def apply(store: FileStore, ops: list[tuple[str, int, int]], touched: set[int], tag: int) -> None:
    for i, (kind, lba, n) in enumerate(ops):
        n = min(n, BLOCKS - lba)
        if kind == "write":
            data = b"".join(
                bytes([(tag * 31 + i * 7 + b) % 251 + 1]) * BLOCK_SIZE for b in range(n)
            )
            store.write(lba * BLOCK_SIZE, data)
        elif kind == "zero":
            store.write_zeroes(lba * BLOCK_SIZE, n * BLOCK_SIZE)
        else:
            store.trim(lba * BLOCK_SIZE, n * BLOCK_SIZE)
        touched.update(range(lba, lba + n))


def blocks(runs: list[tuple[int, int]] | list[list[int]]) -> set[int]:
    out: set[int] = set()
    for off, length in runs:
        assert off % BLOCK_SIZE == 0 and length % BLOCK_SIZE == 0
        out.update(range(off // BLOCK_SIZE, (off + length) // BLOCK_SIZE))
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(op, max_size=12),
    between=st.lists(op, max_size=12),
    after=st.lists(op, max_size=6),
    middle=st.booleans(),
)
def test_delta_and_allocated_equal_what_reading_both_snapshots_shows(
    before: list[tuple[str, int, int]],
    between: list[tuple[str, int, int]],
    after: list[tuple[str, int, int]],
    middle: bool,
) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = FileStore.create(f"{d}/r", SIZE)
        try:
            apply(store, before, set(), 1)
            store.snapshot_create("s1")
            touched: set[int] = set()
            half = len(between) // 2
            apply(store, between[:half], touched, 2)
            if middle:  # a snapshot in between: s2's chain has two layers after s1
                store.snapshot_create("mid")
            apply(store, between[half:], touched, 3)
            store.snapshot_create("s2")
            apply(store, after, set(), 4)  # the head moves on: no answer may change
            gen1 = next(s.generation for s in store.snapshot_list() if s.name == "s1")
            delta = blocks(store.changed_since(gen1, 0, SIZE, "s2"))
            a, b = store.read(0, SIZE, "s1"), store.read(0, SIZE, "s2")
            differ = {
                i
                for i in range(BLOCKS)
                if a[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                != b[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
            }
            assert differ <= delta, (
                f"changed blocks missing from the delta: {sorted(differ - delta)}"
            )
            assert delta <= touched, (
                f"blocks reported that nothing changed: {sorted(delta - touched)}"
            )
            for snap, content in (("s1", a), ("s2", b)):
                allocated = blocks(
                    [(off, n) for off, n, kind in store.extents(0, SIZE, snap) if kind == DATA]
                )
                nonzero = {
                    i for i in range(BLOCKS) if any(content[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                }
                assert allocated == nonzero, snap
        finally:
            store.close()
