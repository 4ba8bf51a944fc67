"""The content of every block the workload writes: self-describing, checksummed.

Each 4 KiB block a write covers gets its own payload, so that whatever a block holds
afterwards says which write put it there (block, write sequence id, writer, run) and
whether it is intact (CRC32C). Offsets (all integers big-endian):

    offset  size  field
    0       8     magic b"CHVERIFY"
    8       2     version (1)
    10      2     writer id (the connection that issued the write)
    12      4     length of the payload (4096)
    16      8     block number the write was addressed to
    24      8     write sequence id (1, 2, ... unique within a run)
    32      8     run id (the workload's seed)
    40      4052  filler: deterministic from (run, block, sequence id)
    4092    4     CRC32C of bytes [0, 4092)

The filler is a slice of a 68 KiB pseudo-random pool drawn from the run id (PCG64), at an
offset hashed from (block, sequence id): writing costs one copy, and two writes never look
alike. ``encode`` builds the payloads of a write; ``decode`` classifies a whole chunk of
blocks read back at once with numpy (headers through strided views over the buffer, zero
detection over 64-bit words, the CRC of each row in C through ``map``): no Python loop per
block. Called by ``workload`` (encode, and decode of reads while writing) and ``checker``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import crc32c
import numpy as np

from cargohold.constants import BLOCK_SIZE

MAGIC = b"CHVERIFY"
VERSION = 1
VERSIONS_READ = frozenset({1})
HEADER_SIZE = 40
CRC_OFFSET = BLOCK_SIZE - 4
FILLER_SIZE = CRC_OFFSET - HEADER_SIZE
_POOL = 64 * 1024

HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", ">u2"),
        ("writer", ">u2"),
        ("length", ">u4"),
        ("block", ">u8"),
        ("seq", ">u8"),
        ("run", ">u8"),
    ]
)
assert HEADER.itemsize == HEADER_SIZE

# what a block read back holds (``Observed.kind``)
ZEROS = 0  # all zero bytes: never written (or trimmed)
PAYLOAD = 1  # an intact payload of this run (header fields valid)
GARBAGE = 2  # neither zeros nor a payload header (no magic, wrong version or length)
CORRUPT = 3  # a payload header whose CRC32C does not match: torn or rotted
FOREIGN = 4  # an intact payload of another run
KIND_NAMES = {ZEROS: "zeros", PAYLOAD: "payload", GARBAGE: "garbage", CORRUPT: "corrupt"}
KIND_NAMES[FOREIGN] = "foreign"

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)


@functools.lru_cache(maxsize=8)
def filler_pool(run: int) -> np.ndarray:
    """The run's pseudo-random pool (read-only)."""
    pool = np.frombuffer(
        np.random.Generator(np.random.PCG64(run)).bytes(_POOL + BLOCK_SIZE), np.uint8
    )
    return pool


def _filler_offsets(blocks: np.ndarray, seq: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = blocks.astype(np.uint64) * _K1 ^ np.uint64(seq) * _K2
    return ((h >> np.uint64(48)) & np.uint64(0xFFF8)).astype(np.intp)


def encode(run: int, writer: int, seq: int, first_block: int, nblocks: int) -> bytearray:
    """The payloads of write ``seq`` of ``nblocks`` blocks from ``first_block``."""
    out = np.empty((nblocks, BLOCK_SIZE), np.uint8)
    hdr = np.zeros(nblocks, HEADER)
    blocks = np.arange(first_block, first_block + nblocks, dtype=np.uint64)
    hdr["magic"] = MAGIC
    hdr["version"] = VERSION
    hdr["writer"] = writer
    hdr["length"] = BLOCK_SIZE
    hdr["block"] = blocks
    hdr["seq"] = seq
    hdr["run"] = run
    out[:, :HEADER_SIZE] = hdr.view(np.uint8).reshape(nblocks, HEADER_SIZE)
    offs = _filler_offsets(blocks, seq)
    pool = filler_pool(run)
    out[:, HEADER_SIZE:CRC_OFFSET] = pool[offs[:, None] + np.arange(FILLER_SIZE)]
    crcs = np.fromiter(
        map(crc32c.crc32c, out[:, :CRC_OFFSET]), dtype=np.uint32, count=nblocks
    ).astype(">u4")
    out[:, CRC_OFFSET:] = crcs.view(np.uint8).reshape(nblocks, 4)
    return bytearray(out.data)


@dataclass(frozen=True, slots=True)
class Observed:
    """What each block of a chunk holds. Header fields are meaningful where
    ``kind`` is PAYLOAD or FOREIGN (and CORRUPT, for the report: they may be garbage)."""

    first_block: int
    kind: np.ndarray  # uint8, one of ZEROS..FOREIGN
    block: np.ndarray  # uint64: the block number in the header
    seq: np.ndarray  # uint64
    writer: np.ndarray  # uint16
    run: np.ndarray  # uint64

    def __len__(self) -> int:
        return len(self.kind)

    def describe(self, i: int) -> dict[str, object]:
        """One block's observation as JSON-able data (for reports)."""
        kind = int(self.kind[i])
        out: dict[str, object] = {"kind": KIND_NAMES[kind]}
        if kind in (PAYLOAD, FOREIGN, CORRUPT):
            out.update(block=int(self.block[i]), write=int(self.seq[i]))
            out.update(writer=int(self.writer[i]), run=int(self.run[i]))
        return out


def decode(buf: bytes | bytearray | memoryview, first_block: int, run: int) -> Observed:
    """Classify every 4 KiB block of ``buf`` (blocks from ``first_block``)."""
    raw = np.frombuffer(buf, np.uint8)
    n = len(raw) // BLOCK_SIZE
    rows = raw[: n * BLOCK_SIZE].reshape(n, BLOCK_SIZE)
    hdr = np.ndarray((n,), HEADER, raw, 0, (BLOCK_SIZE,))
    stored_crc = np.ndarray((n,), ">u4", raw, CRC_OFFSET, (BLOCK_SIZE,))
    words = raw[: n * BLOCK_SIZE].view(np.uint64).reshape(n, BLOCK_SIZE // 8)
    kind = np.full(n, GARBAGE, np.uint8)
    kind[~words.any(axis=1)] = ZEROS
    has_magic = (
        (hdr["magic"] == MAGIC)
        & np.isin(hdr["version"], list(VERSIONS_READ))
        & (hdr["length"] == BLOCK_SIZE)
    )
    idx = np.flatnonzero(has_magic)
    if len(idx):
        if 2 * len(idx) > n:  # most blocks: every row through a view, no copy
            crcs = np.fromiter(map(crc32c.crc32c, rows[:, :CRC_OFFSET]), np.uint32, n)[idx]
        else:
            crcs = np.fromiter(map(crc32c.crc32c, rows[idx, :CRC_OFFSET]), np.uint32, len(idx))
        intact = crcs == stored_crc[idx]
        ours = hdr["run"][idx] == np.uint64(run)
        kind[idx] = np.where(intact, np.where(ours, PAYLOAD, FOREIGN), CORRUPT)
    return Observed(
        first_block,
        kind,
        hdr["block"].astype(np.uint64),
        hdr["seq"].astype(np.uint64),
        hdr["writer"].astype(np.uint16),
        hdr["run"].astype(np.uint64),
    )
