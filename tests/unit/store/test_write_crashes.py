"""The replica store's writes killed at every step (docs/formats/replica-store.md, "Writes,
reads and crashes"): a child process applies a WRITE_BATCH's writes (``write_many``: the
one-loop way of lone one-block writes, ``BlockIO._write_blocks``; ``write`` of a large
write in 128 KiB-like pieces; a run of adjacent writes, ``_write_run``) and dies with
``os._exit`` just before the N-th line of the store's own modules runs, for every N; the
parent reopens the replica (the unclean open settles the records in flight) and checks:

- every block reads back and verifies (no ChecksumError, scrub finds nothing);
- every block holds what the writes up to the reopened generation (complete through) left
  there, or what a later write of the batch left (old or new, never a mix);
- a delta rebuild from that generation (``changed_since``) covers every block that differs
  from what the writes up to it left: nothing missing goes uncopied;
- the generation never goes back as the crash comes later, the history records the new
  epoch before any mark of it, and the write after the failing one (beyond the end) is
  never applied.

The blocks cover the cases of the write order: a block held by the parent layer (a
snapshot), a block in the head, a ZERO record, a hole, one block written twice in the
batch, a first write of a new epoch (the history committed first), a multi-block write in
pieces and a run of adjacent writes in pieces.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.store import block_io, layer, layer_tree
from cargohold.store.file_store import FileStore

CHUNK = 2 * BLOCK_SIZE  # pieces of two blocks: a 5-block write is three pwritev
_WATCHED = {m.__file__ for m in (block_io, layer, layer_tree)}
# the functions of those modules that change a file, the block map or its header: a kill
# between two lines elsewhere leaves what a kill at the next of these lines leaves (the
# header's setters and the map's fallocate run inside them, between two of their lines),
# so these lines are every step there is
_EFFECTS = {
    "_put",
    "_write_run",
    "pwritev",
    "pwrite",
    "_claim_next",
    "_complete",
    "_commit",
    "write_atomic",
}
_CRASHED, _DONE, _BROKEN = 17, 0, 3


def content(tag: int, n: int = 1) -> bytes:
    """``n`` blocks, each different from every other of any tag."""
    return b"".join(bytes([tag, k]) * (BLOCK_SIZE // 2) for k in range(n))


def setup(directory: str) -> None:
    """A parent layer (snapshot ``s``) holding blocks 0-15, a head with block 1 written
    and block 2 zeroed, then epoch 2 accepted: the batch's first write records it."""
    s = FileStore.create(directory, 4 * MIB, write_chunk=CHUNK)
    s.accept_epoch(1)
    s.write(0, content(1, 16), generation=1)
    s.snapshot_create("s")
    s.write(BLOCK_SIZE, content(2), generation=2)
    s.write_zeroes(2 * BLOCK_SIZE, BLOCK_SIZE, generation=3)
    s.accept_epoch(2)
    s.close()


BATCH: list[tuple[int, bytes, int]] = [
    (0, content(4), 4),  # parent's block, first write of epoch 2 (history first)
    (BLOCK_SIZE, content(5), 5),  # the head's block: the one-loop way
    (2 * BLOCK_SIZE, content(6), 6),  # a ZERO record
    (30 * BLOCK_SIZE, content(7), 7),  # a hole
    (30 * BLOCK_SIZE, content(8), 8),  # the same block again
    (40 * BLOCK_SIZE, content(9, 5), 9),  # alone, 5 blocks: write() in three pieces
    (50 * BLOCK_SIZE, content(10), 10),  # a run of adjacent writes, in pieces
    (51 * BLOCK_SIZE, content(11, 3), 11),
    (70 * BLOCK_SIZE, content(12), 12),  # lone again after the run
    (4 * MIB, content(13), 13),  # beyond the end: fails
    (80 * BLOCK_SIZE, content(14), 14),  # after the failure: never applied
]
BLOCKS = 100  # the blocks looked at (everything the batch touches is below)


def before() -> dict[int, bytes]:
    """Each block's content after ``setup``."""
    out = {b: bytes(BLOCK_SIZE) for b in range(BLOCKS)}
    for b in range(16):
        out[b] = content(1, 16)[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]
    out[1], out[2] = content(2), bytes(BLOCK_SIZE)
    return out


def states(upto: int) -> dict[int, bytes]:
    """Each block's content after the batch's writes of generation <= ``upto``."""
    out = before()
    for offset, data, g in BATCH:
        if g > upto or g >= 13:  # 13 fails, 14 is never applied
            continue
        for k in range(len(data) // BLOCK_SIZE):
            out[offset // BLOCK_SIZE + k] = data[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
    return out


STATES = {g: states(g) for g in range(3, 13)}


def possible(b: int, floor: int) -> set[bytes]:
    """What block ``b`` may hold after a crash when the replica says it is complete
    through ``floor``: its content then, or what a later write of the batch left."""
    return {STATES[g][b] for g in range(floor, 13)}


def crash_at(directory: str, step: int, action: Callable[[FileStore], Any]) -> int:
    """Run ``action`` on the opened replica in a child killed (``os._exit``, no cleanup:
    as SIGKILL leaves the page cache) before the ``step``-th line of the store's modules.
    -> the child's exit status: _CRASHED, or _DONE when ``action`` ended first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            s = FileStore.open(directory, write_chunk=CHUNK)
            count = 0

            def trace(frame: Any, event: str, arg: Any) -> Any:
                nonlocal count
                if frame.f_code.co_filename not in _WATCHED:
                    return None
                if event == "line" and frame.f_code.co_name in _EFFECTS:
                    count += 1
                    if count >= step:
                        os._exit(_CRASHED)
                return trace

            sys.settrace(trace)
            action(s)
            sys.settrace(None)
            os._exit(_DONE)
        except BaseException:
            os._exit(_BROKEN)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def where(tmp_path):
    """A directory in memory (tmpfs) where there is one: every open and close of a replica
    syncs its map, and hundreds of them on a shared disk take a minute."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="cargohold-crash-", dir="/dev/shm")
        yield pathlib.Path(d)
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


def check_reopened(directory: str) -> tuple[int, int]:
    s = FileStore.open(directory, write_chunk=CHUNK)
    try:
        g, seen = s.generation, s.seen
        assert 3 <= g <= 12 and g <= seen <= 12, (g, seen)
        got = bytes(s.read(0, BLOCKS * BLOCK_SIZE))  # every block verified
        assert not s.scrub().bad
        then = STATES[g]
        delta = {
            off // BLOCK_SIZE + k for off, n in s.changed_since(g) for k in range(n // BLOCK_SIZE)
        }
        for b in range(BLOCKS):
            blk = got[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]
            assert blk in possible(b, g), f"block {b}: neither old nor new at generation {g}"
            if blk != then[b]:
                assert b in delta, f"block {b} differs from generation {g} but no delta has it"
        assert got[80 * BLOCK_SIZE : 81 * BLOCK_SIZE] == bytes(BLOCK_SIZE)  # never applied
        if seen > 3:  # a mark of epoch 2 on disk: its history entry was durable first
            assert s.history == [[1, 1], [2, 4]], s.history
        assert bytes(s.read(0, BLOCK_SIZE, snapshot="s")) == content(1, 16)[:BLOCK_SIZE]
        return g, seen
    finally:
        s.close()


def test_a_batch_killed_at_every_step_reopens_old_or_new_and_its_generation_honest(where):
    base = str(where / "base")
    setup(base)
    gens: list[int] = []
    step = 1
    while True:
        directory = str(where / f"r{step}")
        subprocess.run(["cp", "-a", "--sparse=always", base, directory], check=True)
        status = crash_at(directory, step, lambda s: s.write_many(list(BATCH)))
        assert status in (_CRASHED, _DONE), f"the child broke at step {step}"
        g, _ = check_reopened(directory)
        assert not gens or g >= gens[-1], f"generation went back at step {step}: {gens[-1]}->{g}"
        gens.append(g)
        shutil.rmtree(directory)
        if status == _DONE:
            break
        step += 1
    assert step > 100, f"only {step} steps: the trace did not see the store's lines"
    assert gens[-1] == 12  # complete through the last write before the failed one
    assert gens[0] == 3


@pytest.mark.parametrize("kind", ["short", "general"])
def test_a_lone_write_killed_at_every_step_reads_old_or_new(where, kind):
    """``write`` of one block: the one-loop way (the epoch recorded) and the general way
    (the first write of an epoch), killed at every step."""
    base = str(where / "base")
    s = FileStore.create(base, 1 * MIB, write_chunk=CHUNK)
    s.accept_epoch(1)
    s.write(0, content(1), generation=1)
    if kind == "general":
        s.accept_epoch(2)
    s.close()
    step, gens = 1, []
    while True:
        directory = str(where / f"r{step}")
        subprocess.run(["cp", "-a", "--sparse=always", base, directory], check=True)
        status = crash_at(directory, step, lambda s: s.write(0, content(2), generation=2))
        assert status in (_CRASHED, _DONE)
        r = FileStore.open(directory)
        try:
            got = bytes(r.read(0, BLOCK_SIZE))
            assert got in (content(1), content(2))
            if r.generation == 2:
                assert got == content(2)
            else:
                assert r.generation == 1 and r.changed_since(1) in ([], [(0, BLOCK_SIZE)])
                assert got == content(1) or r.changed_since(1) == [(0, BLOCK_SIZE)]
            gens.append(r.generation)
        finally:
            r.close()
        shutil.rmtree(directory)
        if status == _DONE:
            break
        step += 1
    assert gens == sorted(gens) and gens[-1] == 2 and gens[0] == 1
