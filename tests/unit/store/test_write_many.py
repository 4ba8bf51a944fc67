"""``write_many`` (the replica server's WRITE_BATCH): adjacent writes of a batch reach the
file store's data file as one ``pwritev``, yet every write keeps what ``write`` gives it —
its own generation, its own outcome, the block map's checksums and generations — and the
file store and its in-memory twin end in the same state. A write that cannot be claimed
fails, and the writes after it are not applied; a failed ``pwritev`` fails its run (and
the rest) and leaves the replica's generation before it (a gap, as a failed ``write``
does)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cargohold.constants import BLOCK_SIZE, GIB
from cargohold.errors import InvalidArgument, ReplicaIOError
from cargohold.store.file_store import FileStore
from cargohold.store.memory_store import MemoryStore


def blocks(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n * BLOCK_SIZE, dtype=np.uint8).tobytes()


@pytest.fixture
def store(tmp_path):
    s = FileStore.create(str(tmp_path / "r"), 1 * GIB)
    yield s
    s.close()


def batch() -> list[tuple[int, bytes, int]]:
    """Three adjacent writes (1, 2 and 1 blocks), one apart, two adjacent again."""
    return [
        (0, blocks(1, 1), 1),
        (BLOCK_SIZE, blocks(2, 2), 2),
        (3 * BLOCK_SIZE, blocks(1, 3), 3),
        (10 * BLOCK_SIZE, blocks(1, 4), 4),
        (20 * BLOCK_SIZE, blocks(4, 5), 5),
        (24 * BLOCK_SIZE, blocks(1, 6), 6),
    ]


def test_adjacent_writes_go_as_one_pwritev_and_read_back_like_single_writes(
    store, tmp_path, monkeypatch
):
    calls: list[int] = []
    real = os.pwritev
    monkeypatch.setattr(
        os, "pwritev", lambda fd, bufs, off: calls.append(len(bufs)) or real(fd, bufs, off)
    )
    assert store.write_many(batch()) == [1, 2, 3, 4, 5, 6]
    assert calls == [3, 2]  # the two runs; the lone write went by pwrite
    twin = MemoryStore(1 * GIB)
    assert twin.write_many(batch()) == [1, 2, 3, 4, 5, 6]
    one = FileStore.create(str(tmp_path / "one"), 1 * GIB)
    for offset, data, g in batch():
        one.write(offset, data, generation=g)
    for s in (twin, one):
        assert bytes(store.read(0, 32 * BLOCK_SIZE)) == bytes(s.read(0, 32 * BLOCK_SIZE))
        assert (store.checksums(0, 32 * BLOCK_SIZE) == s.checksums(0, 32 * BLOCK_SIZE)).all()
        assert store.changed_since(3) == s.changed_since(3)  # generations per block
    assert store.generation == one.generation == 6
    assert not store.scrub().bad
    one.close()


def test_a_write_that_cannot_be_claimed_fails_and_the_rest_are_not_applied(store):
    store.write(0, blocks(1, 0), generation=1)
    got = store.write_many(
        [(BLOCK_SIZE, blocks(1, 1), 1), (2 * BLOCK_SIZE, blocks(1, 2), 2), (0, blocks(1, 3), 3)]
    )
    assert isinstance(got[0], InvalidArgument) and "not above" in str(got[0])
    assert all(isinstance(e, ReplicaIOError) and "not applied" in str(e) for e in got[1:]), got
    assert bytes(store.read(0, 3 * BLOCK_SIZE)) == blocks(1, 0) + bytes(2 * BLOCK_SIZE)
    assert store.generation == 1 and store.seen == 1
    twin = MemoryStore(1 * GIB)  # the base class's loop: the same rule
    twin.write(0, blocks(1, 0), generation=1)
    got = twin.write_many([(BLOCK_SIZE, blocks(1, 1), 1), (2 * BLOCK_SIZE, blocks(1, 2), 2)])
    assert isinstance(got[0], InvalidArgument) and isinstance(got[1], ReplicaIOError)
    assert bytes(twin.read(BLOCK_SIZE, 2 * BLOCK_SIZE)) == bytes(2 * BLOCK_SIZE)


def test_a_failed_pwritev_fails_its_run_and_leaves_a_gap(store, monkeypatch):
    store.write(0, blocks(1, 0), generation=1)

    def broken(fd, bufs, off):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "pwritev", broken)
    got = store.write_many(
        [
            (BLOCK_SIZE, blocks(1, 1), 2),
            (2 * BLOCK_SIZE, blocks(1, 2), 3),
            (9 * BLOCK_SIZE, blocks(1, 3), 4),
        ]
    )
    assert all(isinstance(e, ReplicaIOError) for e in got), got
    assert "not applied" in str(got[2])  # the lone write after the failed run: refused
    assert store.generation == 1  # complete through 1 only: the engine drops this replica
    assert bytes(store.read(BLOCK_SIZE, 2 * BLOCK_SIZE)) == bytes(2 * BLOCK_SIZE)
    assert not store.scrub().bad  # the old content still verifies


def test_one_block_writes_take_the_short_way_only_when_their_claim_is_plain(store, tmp_path):
    """``BlockIO.write``'s short way for one numbered block ends exactly where the general
    way does (the in-memory twin), and whatever it does not admit is still checked: the
    first write of an epoch records the history, a stale number, an unaligned or
    out-of-range block and an unnumbered write are refused, none of them changing
    anything."""
    twin = MemoryStore(1 * GIB)
    for s in (store, twin):
        s.accept_epoch(1)
        assert s.write(5 * BLOCK_SIZE, blocks(1, 1), generation=1) == 1  # records epoch 1
        s.accept_epoch(2)
        assert s.write(6 * BLOCK_SIZE, blocks(1, 2), generation=2) == 2  # records epoch 2
        assert s.write(7 * BLOCK_SIZE, blocks(1, 3), generation=3) == 3  # the short way
        assert s.write(9 * BLOCK_SIZE, blocks(1, 4), generation=5) == 3  # a gap at 4
        assert s.history == [[1, 1], [2, 2]]
        for offset, g in ((8 * BLOCK_SIZE, 5), (100, 6), (1 * GIB, 6), (0, 0)):
            with pytest.raises(InvalidArgument):
                s.write(offset, blocks(1, 9), generation=g)
        assert s.generation == 3 and s.seen == 5
    assert bytes(store.read(0, 16 * BLOCK_SIZE)) == bytes(twin.read(0, 16 * BLOCK_SIZE))
    assert (store.checksums(0, 16 * BLOCK_SIZE) == twin.checksums(0, 16 * BLOCK_SIZE)).all()
    assert store.changed_since(2) == twin.changed_since(2)
    assert not store.scrub().bad
    again = FileStore.open(str(tmp_path / "r"))  # what the map and its header persisted
    assert (again.generation, again.seen, again.history) == (3, 5, [[1, 1], [2, 2]])
    again.close()


def test_lone_writes_of_a_batch_end_as_one_by_one_and_a_failed_one_stops_the_rest(
    store, monkeypatch
):
    """Lone one-block writes of a batch (random 4 KiB writes) go through one loop
    (``BlockIO._write_blocks``): they end where ``write`` one by one ends (the in-memory
    twin), counted once each; when one's ``pwrite`` fails, the ones before it are stored
    and complete, it fails leaving a gap (claimed, never complete), the rest are not
    applied, and every block still verifies."""
    lone = [(k * 3 * BLOCK_SIZE, blocks(1, k), k + 1) for k in range(6)]
    twin = MemoryStore(1 * GIB)
    assert store.write_many(lone) == [1, 2, 3, 4, 5, 6]
    for offset, data, g in lone:
        twin.write(offset, data, generation=g)
    assert bytes(store.read(0, 18 * BLOCK_SIZE)) == bytes(twin.read(0, 18 * BLOCK_SIZE))
    assert (store.checksums(0, 18 * BLOCK_SIZE) == twin.checksums(0, 18 * BLOCK_SIZE)).all()
    assert store.changed_since(0) == twin.changed_since(0)
    assert store.counters["writes"] == 6 and store.counters["written_bytes"] == 6 * BLOCK_SIZE

    real, calls = os.pwrite, []

    def third_fails(fd, data, off):
        calls.append(off)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real(fd, data, off)

    monkeypatch.setattr(os, "pwrite", third_fails)
    again = [(k * 3 * BLOCK_SIZE, blocks(1, 10 + k), 7 + k) for k in range(5)]
    got = store.write_many(again)
    assert got[:2] == [7, 8], got
    assert isinstance(got[2], ReplicaIOError) and "not applied" not in str(got[2])
    assert all(isinstance(e, ReplicaIOError) and "not applied" in str(e) for e in got[3:])
    assert len(calls) == 3  # nothing after the failed one reached the file
    assert store.generation == 8 and store.seen == 9  # a gap at 9: the engine drops us
    assert store.counters["writes"] == 8
    monkeypatch.undo()
    assert bytes(store.read(0, BLOCK_SIZE)) == blocks(1, 10)
    assert bytes(store.read(6 * BLOCK_SIZE, BLOCK_SIZE)) == blocks(1, 2)  # its old content
    assert bytes(store.read(9 * BLOCK_SIZE, BLOCK_SIZE)) == blocks(1, 3)  # not applied
    assert not store.scrub().bad


@pytest.mark.parametrize("how", ["write", "write_zeroes", "trim", "write_many"])
def test_an_empty_numbered_mutation_takes_its_number(store, how):
    """A mutation of no bytes that carries the engine's number (the wire lets a WRITE, TRIM
    or WRITE_ZEROES of length 0 through) is a mutation that completed: it takes its
    number, so the ones after it continue the sequence; acknowledged without its number,
    it left a gap that kept the replica's generation (complete through) behind for ever
    although it missed nothing. A stale number is refused as for any mutation."""
    twin = MemoryStore(1 * GIB)
    for s in (store, twin):
        s.write(0, blocks(1, 1), generation=1)
        if how == "write":
            assert s.write(BLOCK_SIZE, b"", generation=2) == 2
        elif how == "write_many":
            assert s.write_many([(BLOCK_SIZE, b"", 2)]) == [2]
        else:
            assert getattr(s, how)(BLOCK_SIZE, 0, generation=2) == 2
        assert s.write(BLOCK_SIZE, blocks(1, 2), generation=3) == 3
        assert (s.generation, s.seen) == (3, 3)
        with pytest.raises(InvalidArgument):
            s.write(0, b"", generation=3)
        assert s.write(0, b"") == 3  # unnumbered (the store's own callers): nothing to take
