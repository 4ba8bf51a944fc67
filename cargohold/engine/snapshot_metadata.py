"""Changed-block metadata of a volume's snapshots, from the replicas' own change tracking:
which blocks a snapshot holds data in (``allocated``), and which blocks differ between two
snapshots of the volume (``delta``) — for backup tools (CSI SnapshotMetadata,
csi/snapshot_metadata.py) that then read only those blocks.

Called by ``control`` (the engine's control op ``snapshot-metadata``). Nothing is read
but the block maps: ``allocated`` is the replica's EXTENTS of the snapshot (its DATA runs);
``delta`` is its CHANGED of the target snapshot's layer chain after the base snapshot's
generation — every block written, zeroed or trimmed after the base was taken, as the
target sees it. So a delta is never smaller than the real difference (a block rewritten
with the same bytes is in it) and never reports a block neither snapshot changed.

Answers are pages: runs of whole blocks from ``offset`` on, at most ``max_results`` of them;
``next_offset`` is where the next page starts (the volume's size when there is no more).

An encrypted volume (``encrypted``) is answered in its own, logical offsets: the replicas
track the physical volume (encryption/layout.py: ciphertext blocks with a tag block after
every 64), so the page is scanned there and its runs mapped back, tag blocks left out (a
write changes its block's tag block too; the data block says which logical block it was).
"""

from __future__ import annotations

from typing import Any

from cargohold.constants import BLOCK_SIZE
from cargohold.encryption import layout
from cargohold.engine.volume import Volume
from cargohold.errors import InvalidArgument, NotFound, ReplicaIOError
from cargohold.protocol import extent_stream as xs
from cargohold.replica.client import ReplicaClient

MAX_RESULTS = 4096  # runs in one page at most (and the default)
SCAN_BYTES = 1 << 40  # one replica call covers at most this much of the volume


def _client(vol: Volume) -> ReplicaClient:
    for link in vol.readers():
        if link.client is not None:
            return link.client
    raise ReplicaIOError(f"volume {vol.name}: no current replica")


def _page_args(offset: Any, max_results: Any, size: int) -> tuple[int, int]:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidArgument("offset must be a byte offset >= 0")
    if offset > size:
        raise InvalidArgument(f"offset {offset} is beyond the volume's size {size}")
    if max_results in (None, 0):
        max_results = MAX_RESULTS
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 0:
        raise InvalidArgument("max_results must be a count >= 0")
    return offset - offset % BLOCK_SIZE, min(max_results, MAX_RESULTS)


async def _generations(client: ReplicaClient) -> dict[str, int]:
    return {s["name"]: int(s.get("generation", 0)) for s in await client.snapshot_list()}


async def page(
    vol: Volume,
    snapshot: Any,
    base: Any = None,
    offset: Any = 0,
    max_results: Any = None,
    encrypted: bool = False,
) -> dict[str, Any]:
    """One page of ``snapshot``'s allocated blocks, or (with ``base``) of the blocks that
    changed from snapshot ``base`` to ``snapshot``; of the logical volume when
    ``encrypted`` (module doc)."""
    if encrypted:
        return await _logical_page(vol, snapshot, base, offset, max_results)
    vol.check_usable()
    if not isinstance(snapshot, str) or not snapshot:
        raise InvalidArgument("snapshot (a snapshot's name) is required")
    if base is not None and (not isinstance(base, str) or not base):
        raise InvalidArgument("base must be a snapshot's name")
    client = _client(vol)
    gens = await _generations(client)
    for name in (snapshot, base):
        if name is not None and name not in gens:
            raise NotFound(f"volume {vol.name}: no snapshot named {name!r}")
    size = vol.size
    pos, limit = _page_args(offset, max_results, size)
    if base is not None and gens[base] > gens[snapshot]:
        raise InvalidArgument(
            f"base snapshot {base!r} (generation {gens[base]}) is newer than {snapshot!r} "
            f"(generation {gens[snapshot]})"
        )
    runs: list[tuple[int, int]] = []
    while pos < size and len(runs) < limit:
        length = min(size - pos, SCAN_BYTES)
        if base is None:  # EXTENTS covers a bounded span per call: go on from its end
            extents = await client.extents(pos, length, snapshot)
            end = max((off + n for off, n, _ in extents), default=pos + length)
            found = [(off, n) for off, n, kind in extents if kind == xs.KIND_DATA]
        else:
            changed = await client.changed_since(gens[base], pos, length, snapshot)
            found = [(int(x[0]), int(x[1])) for x in changed]
            end = pos + length
        for off, n in found:
            if len(runs) == limit and not (runs[-1][0] + runs[-1][1] == off):
                end = off  # the next page starts here
                break
            if runs and runs[-1][0] + runs[-1][1] == off:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((off, n))
        pos = max(end, pos + BLOCK_SIZE)
    return {
        "volume_capacity_bytes": size,
        "block_size": BLOCK_SIZE,
        "runs": [[off, n] for off, n in runs],
        "next_offset": min(pos, size),
    }


async def _logical_page(
    vol: Volume, snapshot: Any, base: Any, offset: Any, max_results: Any
) -> dict[str, Any]:
    """``page`` of an encrypted volume: the physical page from the data block of logical
    ``offset`` on, its runs and its end mapped to logical blocks."""
    size = layout.logical_size(vol.size)
    pos, limit = _page_args(offset, max_results, size)
    phys = layout.data_block(pos // BLOCK_SIZE) * BLOCK_SIZE if pos < size else vol.size
    got = await page(vol, snapshot, base, phys, limit)
    runs: list[list[int]] = []
    for off, n in got["runs"]:
        span = layout.logical_extent(off // BLOCK_SIZE, (off + n) // BLOCK_SIZE)
        if span is None:
            continue  # a tag block alone
        lo, hi = span[0] * BLOCK_SIZE, span[1] * BLOCK_SIZE
        if runs and runs[-1][0] + runs[-1][1] == lo:
            runs[-1][1] += hi - lo
        else:
            runs.append([lo, hi - lo])
    nxt = got["next_offset"]
    return {
        "volume_capacity_bytes": size,
        "block_size": BLOCK_SIZE,
        "runs": runs,
        "next_offset": min(size, layout.first_logical_at(nxt // BLOCK_SIZE) * BLOCK_SIZE),
    }
