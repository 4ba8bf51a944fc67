"""Comparing replicas by their checksum maps, and copying the blocks that differ.

Called by ``rebuild`` (the rebuilt replica against its source, before it becomes RW) and
by ``scrubber`` (every current replica against the others). The replicas' CHECKSUMS op
gives, from the block maps alone (no data is read), per block the CRC32C of what a read
returns — holes and zeroed blocks as the CRC32C of a zero block — or one digest per window
of ``DIGEST_BLOCKS`` blocks; replicas compare windows by digest (4 bytes per 16 MiB of
volume) and fetch per-block maps only for windows whose digests differ.

The caller keeps mutations away from the range while it compares and copies (a rebuild
window, or the volume's hold): a write in flight would otherwise look like a difference,
or a copy could overwrite it with older data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cargohold.constants import BLOCK_SIZE, MAX_IO_BYTES
from cargohold.errors import ReplicaIOError
from cargohold.protocol import extent_stream as xs
from cargohold.protocol import replica_wire as wire
from cargohold.replica.client import ReplicaClient

if TYPE_CHECKING:  # numpy is imported where it is used: an engine that never compares
    import numpy as np  # replicas does not load it (~10 MiB of RSS per engine)


DIGEST_BLOCKS = 4096
"""Blocks per digest window (16 MiB of volume)."""
RANGE_BYTES = wire.MAX_CHECKSUM_BLOCKS * BLOCK_SIZE
"""Volume bytes one CHECKSUMS call covers (2 GiB)."""


def ranges(size: int, step: int = RANGE_BYTES) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of a volume of ``size`` bytes for CHECKSUMS calls."""
    for off in range(0, size, step):
        yield off, min(step, size - off)


async def differing(
    clients: Sequence[ReplicaClient],
    offset: int,
    length: int,
    timeout: float,
    snapshot: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Where replicas' checksum maps of [offset, offset + length) disagree.

    -> (the blocks (absolute numbers) where not every replica has the same checksum, and
    their checksums: an array of shape (len(clients), len(blocks)))."""
    import numpy as np

    digests = await asyncio.gather(
        *(
            asyncio.wait_for(c.checksums(offset, length, snapshot, DIGEST_BLOCKS), timeout)
            for c in clients
        )
    )
    d = np.stack([_values(x) for x in digests])
    windows = np.flatnonzero((d != d[0]).any(axis=0)).tolist()
    blocks: list[np.ndarray] = []
    crcs: list[np.ndarray] = []
    first = offset // BLOCK_SIZE
    end = (offset + length) // BLOCK_SIZE
    for w in windows:
        lo = first + w * DIGEST_BLOCKS
        hi = min(end, lo + DIGEST_BLOCKS)
        maps = await asyncio.gather(
            *(
                asyncio.wait_for(
                    c.checksums(lo * BLOCK_SIZE, (hi - lo) * BLOCK_SIZE, snapshot), timeout
                )
                for c in clients
            )
        )
        m = np.stack([_values(x) for x in maps])
        idx = np.flatnonzero((m != m[0]).any(axis=0))
        blocks.append(lo + idx)
        crcs.append(m[:, idx])
    if not blocks:
        return np.zeros(0, dtype=np.int64), np.zeros((len(clients), 0), dtype="<u4")
    return np.concatenate(blocks).astype(np.int64), np.concatenate(crcs, axis=1)


def _values(c: wire.Checksums) -> np.ndarray:
    import numpy as np

    return np.frombuffer(c.values, dtype="<u4")


def block_runs(blocks: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first block, count) of each run of consecutive numbers in a sorted array."""
    import numpy as np

    if blocks.size == 0:
        return
    cut = np.flatnonzero(np.diff(blocks) != 1) + 1
    starts = np.concatenate(([0], cut))
    stops = np.concatenate((cut, [blocks.size]))
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        yield int(blocks[a]), b - a


async def recopy(
    source: ReplicaClient, target: ReplicaClient, blocks: np.ndarray, timeout: float
) -> int:
    """Make the head of ``target`` read as the head of ``source`` at ``blocks``: each run is
    exported from the source (a full export: data and zeroed blocks), blocks the source
    holds nothing for become zeroed extents, and the target imports that (history, not a
    mutation: the target's generation does not move). -> bytes sent."""
    import numpy as np

    sent = 0
    for lba, count in block_runs(blocks):
        pos, end = lba * BLOCK_SIZE, (lba + count) * BLOCK_SIZE
        while pos < end:
            blob = await asyncio.wait_for(
                source.export(pos, end - pos, max_bytes=MAX_IO_BYTES // 2), timeout
            )
            header, extents = xs.decode(blob)
            if header.end <= pos:
                raise ReplicaIOError(f"replica {source.where}: EXPORT at {pos} made no progress")
            covered = np.zeros((header.end - pos) // BLOCK_SIZE, dtype=bool)
            base = pos // BLOCK_SIZE
            for e in extents:
                covered[e.lba - base : e.lba - base + e.count] = True
            holes = [xs.Extent(xs.KIND_ZERO, base + a, b - a) for a, b in _false_runs(covered)]
            stream = xs.encode(
                xs.StreamHeader(pos, header.end, 0, header.generation),
                sorted([*extents, *holes], key=lambda e: e.lba),
            )
            await asyncio.wait_for(target.import_stream(stream), timeout)
            sent += sum(len(b) for b in stream)
            pos = header.end
    return sent


def _false_runs(mask: np.ndarray) -> Iterator[tuple[int, int]]:
    import numpy as np

    idx = np.flatnonzero(~mask)
    for a, n in block_runs(idx):
        yield a, a + n
