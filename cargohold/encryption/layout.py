"""Where an encrypted volume keeps its blocks and their authentication tags.

An encrypted volume is stored as a larger, plain volume (the *physical* volume the engine
replicates, snapshots, rebuilds and backs up) in groups of ``GROUP + 1`` blocks: ``GROUP``
blocks of ciphertext, then one *tag block* holding the ``GROUP`` blocks' tag entries
(``ENTRY`` bytes each). Group *g* starts at physical block ``g * (GROUP + 1)``; logical
block *i* is physical block ``(i // GROUP) * (GROUP + 1) + i % GROUP``. A write of whole
groups is one contiguous physical range (ciphertext and tags together); a volume grows by
appending groups, so online expansion moves nothing.

The logical size of an encrypted volume is a multiple of ``GROUP_BYTES`` (256 KiB): sizes
are rounded up to it at creation and expansion (``logical_size_for``), so the physical size
determines the logical one (``logical_size``) and the engine needs no second number.
Pure arithmetic; every fact about the layout is computed here and only here.
"""

from __future__ import annotations

from cargohold.errors import InvalidArgument

BLOCK = 4096
GROUP = 64  # ciphertext blocks per group
ENTRY = BLOCK // GROUP  # 64 bytes of tag entry per block
GROUP_BYTES = GROUP * BLOCK  # 256 KiB of logical data per group
PHYSICAL_GROUP_BYTES = (GROUP + 1) * BLOCK


def logical_size_for(requested: int) -> int:
    """The logical size an encrypted volume of ``requested`` bytes gets: rounded up to a
    whole number of groups."""
    if requested <= 0:
        raise InvalidArgument(f"an encrypted volume's size must be positive, not {requested}")
    return -(-requested // GROUP_BYTES) * GROUP_BYTES


def physical_size(logical: int) -> int:
    """Bytes of the plain volume that stores an encrypted volume of ``logical`` bytes."""
    if logical <= 0 or logical % GROUP_BYTES:
        raise InvalidArgument(
            f"an encrypted volume's size must be a positive multiple of {GROUP_BYTES} bytes, "
            f"not {logical}"
        )
    return logical // GROUP_BYTES * PHYSICAL_GROUP_BYTES


def logical_size(physical: int) -> int:
    """Bytes of the encrypted volume a plain volume of ``physical`` bytes stores (whole
    groups only: a partial group at the end is not used)."""
    return physical // PHYSICAL_GROUP_BYTES * GROUP_BYTES


def data_block(i: int) -> int:
    """The physical block holding logical block ``i``'s ciphertext."""
    return i // GROUP * (GROUP + 1) + i % GROUP


def tag_block(i: int) -> int:
    """The physical block holding logical block ``i``'s tag entry."""
    return i // GROUP * (GROUP + 1) + GROUP


def tag_offset(i: int) -> int:
    """Where logical block ``i``'s tag entry starts within its tag block."""
    return i % GROUP * ENTRY


def extent_blocks(lo: int, hi: int) -> int:
    """Physical blocks of the extent holding logical blocks [lo, hi), ``lo`` at a group's
    start: their ciphertext and the tag blocks of the whole groups among them."""
    if hi <= lo:
        return 0
    end = data_block(hi - 1) + 1 + (1 if hi % GROUP == 0 else 0)
    return end - data_block(lo)


def logical_runs(start: int, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Block status of physical blocks from ``start`` (``(bytes, flags)`` runs) as runs of
    the logical blocks they hold: tag blocks left out, neighbours of equal flags merged."""
    out: list[tuple[int, int]] = []
    p = start
    for n, flags in runs:
        q = p + n // BLOCK
        span = logical_extent(p, q)  # one range per run: no loop over its blocks
        if span is not None:
            size = (span[1] - span[0]) * BLOCK
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + size, flags)
            else:
                out.append((size, flags))
        p = q
    return out


def logical_block(phys: int) -> int:
    """The logical block a physical *data* block holds (the inverse of ``data_block``)."""
    return phys // (GROUP + 1) * GROUP + phys % (GROUP + 1)


def first_logical_at(phys: int) -> int:
    """The first logical block whose data block is at or after physical block ``phys``."""
    return logical_block(phys + 1 if phys % (GROUP + 1) == GROUP else phys)


def logical_extent(first: int, end: int) -> tuple[int, int] | None:
    """The logical blocks ``[lo, hi)`` whose data blocks lie in the physical blocks
    ``[first, end)``: one range, since tag blocks only sit between logically adjacent
    blocks. None when the span holds no data block (a lone tag block)."""
    lo, hi = first_logical_at(first), first_logical_at(end)
    return (lo, hi) if hi > lo else None
