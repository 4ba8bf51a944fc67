"""Large writes reach the page cache in pieces of ``write_chunk`` bytes (``layer.pieces``):
the kernel sizes a buffered write's folios by its length, and small writes into large
folios are dear. The pieces cover the write exactly, in order, each at most the cap; the
content, checksums and generations are those of one ``pwrite``; a piece that fails leaves
every block of the write reading as its old or its new content (the crash rule of
docs/formats/replica-store.md), and the setting refuses caps that are not whole blocks."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from cargohold.constants import BLOCK_SIZE, MIB, STORE_WRITE_CHUNK
from cargohold.errors import ConfigError, InvalidArgument, ReplicaIOError
from cargohold.settings import ReplicaServerSettings
from cargohold.store.file_store import FileStore
from cargohold.store.layer import Layer, check_write_chunk, pieces


def blocks(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n * BLOCK_SIZE, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("cap_blocks", [1, 2, 3, 5, 8, 64])
@pytest.mark.parametrize("sizes", [[16], [3, 7, 1, 5], [1] * 9, [32, 1]])
def test_pieces_cover_the_buffers_in_order_each_at_most_the_cap(cap_blocks, sizes):
    data = blocks(sum(sizes), 1)
    bufs, pos = [], 0
    for n in sizes:
        bufs.append(memoryview(data)[pos : pos + n * BLOCK_SIZE])
        pos += n * BLOCK_SIZE
    cap = cap_blocks * BLOCK_SIZE
    got = list(pieces(100, bufs, cap))
    lba = 100
    joined = b""
    for at, piece in got:
        size = sum(len(b) for b in piece)
        assert at == lba and 0 < size <= cap and size % BLOCK_SIZE == 0
        joined += b"".join(bytes(b) for b in piece)
        lba += size // BLOCK_SIZE
    assert joined == data and lba == 100 + sum(sizes)
    assert len(got) == -(-len(data) // cap)


def test_no_cap_or_a_small_write_is_one_piece():
    bufs = [memoryview(blocks(4, 2))]
    assert list(pieces(7, bufs, 0)) == [(7, bufs)]
    assert list(pieces(7, bufs, 4 * BLOCK_SIZE)) == [(7, bufs)]


@pytest.mark.parametrize("bad", [-BLOCK_SIZE, 1000, BLOCK_SIZE + 1, True, 4096.0])
def test_a_cap_that_is_not_whole_blocks_is_refused(bad, tmp_path):
    with pytest.raises(InvalidArgument):
        check_write_chunk(bad)
    with pytest.raises(InvalidArgument):
        FileStore.create(str(tmp_path / "r"), MIB, write_chunk=bad)


def test_the_setting_defaults_to_the_store_default_and_takes_whole_blocks(monkeypatch):
    assert ReplicaServerSettings().store_write_chunk == STORE_WRITE_CHUNK
    monkeypatch.setenv("CARGOHOLD_REPLICA_STORE_WRITE_CHUNK", "65536")
    assert ReplicaServerSettings().store_write_chunk == 65536
    monkeypatch.setenv("CARGOHOLD_REPLICA_STORE_WRITE_CHUNK", "5000")
    with pytest.raises(ConfigError):
        ReplicaServerSettings()


def spy(monkeypatch) -> list[tuple[int, int]]:
    """(first block, bytes) of every ``Layer.pwritev`` from here on."""
    calls: list[tuple[int, int]] = []
    real = Layer.pwritev

    def pwritev(self, lba, bufs):
        calls.append((lba, sum(len(b) for b in bufs)))
        return real(self, lba, bufs)

    monkeypatch.setattr(Layer, "pwritev", pwritev)
    return calls


@pytest.mark.parametrize("chunk", [0, 2 * BLOCK_SIZE, 5 * BLOCK_SIZE])
def test_writes_and_runs_go_in_pieces_and_read_back_as_one_write(tmp_path, monkeypatch, chunk):
    s = FileStore.create(str(tmp_path / "r"), 4 * MIB, write_chunk=chunk)
    whole = FileStore.create(str(tmp_path / "whole"), 4 * MIB, write_chunk=0)
    try:
        calls = spy(monkeypatch)
        big = blocks(12, 3)
        run = [(40 * BLOCK_SIZE, blocks(3, 4), 2), (43 * BLOCK_SIZE, blocks(6, 5), 3)]
        assert s.write(8 * BLOCK_SIZE, big, generation=1) == 1
        assert s.write_many(run) == [2, 3]
        cap = chunk or 12 * BLOCK_SIZE
        assert all(size <= cap for _, size in calls)
        assert sum(size for _, size in calls) == 21 * BLOCK_SIZE
        assert len(calls) == (
            2 if not chunk else -(-12 * BLOCK_SIZE // cap) - (-9 * BLOCK_SIZE // cap)
        )
        whole.write(8 * BLOCK_SIZE, big, generation=1)
        whole.write_many(run)
        assert s.read(0, MIB) == whole.read(0, MIB)
        assert bytes(s.read(8 * BLOCK_SIZE, len(big))) == big
        h, w = s._chain[0], whole._chain[0]
        assert (h.cur[:256] == w.cur[:256]).all() and (h.meta[:256] == w.meta[:256]).all()
        assert s.generation == whole.generation == 3
    finally:
        s.close()
        whole.close()


def test_a_failed_piece_fails_the_write_and_every_block_reads_old_or_new(tmp_path, monkeypatch):
    s = FileStore.create(str(tmp_path / "r"), 4 * MIB, write_chunk=2 * BLOCK_SIZE)
    try:
        old, new = blocks(8, 6), blocks(8, 7)
        s.write(0, old, generation=1)
        real = Layer.pwritev
        done: list[int] = []

        def pwritev(self, lba, bufs):
            if done:  # the first piece lands, the second fails
                raise OSError(errno.EIO, "injected")
            done.append(lba)
            return real(self, lba, bufs)

        monkeypatch.setattr(Layer, "pwritev", pwritev)
        with pytest.raises(ReplicaIOError):
            s.write(0, new, generation=2)
        monkeypatch.undo()
        got = bytes(s.read(0, len(old)))  # verifies every block's checksum
        for b in range(8):
            blk = got[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]
            want = new if b < 2 else old
            assert blk == want[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]
        assert s.generation == 1  # claimed, never completed
    finally:
        s.close()
