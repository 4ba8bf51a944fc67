"""Integrity work on layers: settle a crash, scrub, repair. Called by ``file_store``.

- ``recover_head`` after an unclean shutdown: writes that were in flight end as their old
  or their new content (whichever the block holds), and the newest generation recorded in
  the block map is found (the complete-through generation in the header stays); after a
  machine crash, the blocks recorded after the last FLUSH whose data did not survive are
  counted.
- ``scrub_layers`` verifies every data block of every layer (or of a block range of each)
  against its CRC32C.
- ``repair_layers`` rewrites bad blocks with good content, but only content whose
  checksum matches what the map recorded: a repair can never bring in other data.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.store import format as fmt
from cargohold.store.base import BadBlock, ScrubReport, block_crcs, runs
from cargohold.store.layer import Layer, io_error

CHUNK = 1 << 16  # blocks per step (256 MiB of volume)
SCRUB_STEP = 256  # blocks per scrub read (1 MiB)


def recover_head(head: Layer, seen: int, lost_above: int | None = None) -> tuple[int, int, int]:
    """-> (the newest generation recorded in the map, how many in-flight blocks were
    settled, how many blocks a machine crash lost). The complete-through generation in the
    header is left as it is.

    ``lost_above`` (after a machine crash: the generation the store is complete through
    now): every DATA block recorded above it is read too, not only those with a write in
    flight (``cur != pend``), since the kernel may have written its record back and not its
    data; one that matches neither checksum is lost: left as it is (it fails its checksum:
    reported, never returned, repaired from a healthy replica) and counted."""
    top = seen
    fixed = lost = 0
    buf = bytearray(BLOCK_SIZE)
    for a, b in head.record_ranges(0, head.nblocks):
        for lo in range(a, b, CHUNK):
            hi = min(b, lo + CHUNK)
            meta = head.meta[lo:hi]
            if meta.size:
                top = max(top, int((meta >> fmt.GEN_SHIFT).max()))
            check = head.cur[lo:hi] != head.pend[lo:hi]
            if lost_above is not None:
                check |= (meta >> fmt.GEN_SHIFT) > lost_above
            check = np.flatnonzero(((meta & fmt.STATE_MASK) == fmt.DATA) & check)
            del meta
            for i in (lo + check).tolist():
                head.pread_into(i, memoryview(buf))
                c = int(block_crcs(buf)[0])
                if c == head.pend[i] == head.cur[i]:
                    continue
                if c == head.pend[i]:
                    head.cur[i] = c
                elif c == head.cur[i]:
                    head.pend[i] = c
                else:  # really bad: scrub and reads report it
                    if lost_above is not None and int(head.meta[i]) >> fmt.GEN_SHIFT > lost_above:
                        lost += 1
                    continue
                fixed += 1
    head.sync()
    return top, fixed, lost


def scrub_layers(
    named: list[tuple[str, Layer]], lba: int = 0, n: int | None = None
) -> Generator[int, None, ScrubReport]:
    """Blocks [lba, lba + n) of each layer (default: all). Yields blocks checked so far;
    returns the ScrubReport."""
    checked = 0
    bad: list[BadBlock] = []
    buf = bytearray(SCRUB_STEP * BLOCK_SIZE)
    mv = memoryview(buf)
    for name, layer in named:
        end = layer.nblocks if n is None else min(layer.nblocks, lba + n)
        for a, b in list(layer.record_ranges(lba, end)) if lba < end else ():
            for lo in range(a, b, SCRUB_STEP):
                hi = min(b, lo + SCRUB_STEP)
                mask = (layer.meta[lo:hi] & np.uint64(fmt.STATE_MASK)) == fmt.DATA
                for s, e in runs(mask):
                    part = mv[s * BLOCK_SIZE : e * BLOCK_SIZE]
                    layer.pread_into(lo + s, part)
                    got = block_crcs(part)
                    sl = slice(lo + s, lo + e)
                    wrong = np.flatnonzero((got != layer.cur[sl]) & (got != layer.pend[sl]))
                    bad.extend(BadBlock(name, lo + s + int(i)) for i in wrong)
                    checked += e - s
                yield checked
    return ScrubReport(checked, tuple(bad))


def repair_layers(layers: list[Layer], lba: int, mv: memoryview) -> int:
    """Rewrite each bad copy of these blocks, in any layer, whose recorded CRC32C the given
    content matches. -> blocks repaired."""
    n = len(mv) // BLOCK_SIZE
    crcs = block_crcs(mv)
    fixed = 0
    probe = bytearray(BLOCK_SIZE)
    for layer in layers:
        m = min(n, layer.nblocks - lba)
        if m <= 0:
            continue
        st = layer.meta[lba : lba + m] & np.uint64(fmt.STATE_MASK)
        fits = (st == fmt.DATA) & (
            (layer.cur[lba : lba + m] == crcs[:m]) | (layer.pend[lba : lba + m] == crcs[:m])
        )
        for i in np.flatnonzero(fits).tolist():
            layer.pread_into(lba + i, memoryview(probe))
            if int(block_crcs(probe)[0]) == int(crcs[i]):
                continue  # this copy is fine
            try:
                layer.pwrite(lba + i, mv[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                layer.sync()
            except OSError as e:
                raise io_error(e, "repair") from None
            layer.cur[lba + i] = crcs[i]
            layer.pend[lba + i] = crcs[i]
            fixed += 1
    return fixed
