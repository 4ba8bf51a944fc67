"""Integrity work on layers: settle a crash, scrub, repair. Called by ``file_store``.

- ``recover_head`` after an unclean shutdown: writes that were in flight end as their old
  or their new content (whichever the block holds), and the newest generation recorded in
  the block map is found (the complete-through generation in the header stays); after a
  machine crash, every data block of the head is verified and a torn one takes the value
  its data page holds (or is counted lost when that is unknown).
- ``scrub_layers`` verifies every data block of every layer (or of a block range of each)
  against its CRC32C.
- ``repair_layers`` rewrites bad blocks with good content, but only content whose
  checksum matches what the map recorded: a repair can never bring in other data.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from cargohold.constants import BLOCK_SIZE
from cargohold.store import format as fmt
from cargohold.store.base import BadBlock, ScrubReport, block_crcs, runs
from cargohold.store.layer import SEEK_DATA, Layer, io_error

CHUNK = 1 << 16  # blocks per step (256 MiB of volume)
SCRUB_STEP = 256  # blocks per scrub read (1 MiB)
VERIFY_STEP = 1024  # blocks per read of the verify after a machine crash (4 MiB)


@dataclass(frozen=True)
class Recovery:
    """What ``recover_head`` found."""

    top: int  # the newest generation recorded in the map (or the ``seen`` given)
    settled: int  # blocks whose write was in flight, settled as old or new
    adopted: int = 0  # machine crash: torn blocks whose data page was taken as their value
    lost: int = 0  # machine crash: torn blocks whose value is unknown (fail their check)


def recover_head(
    head: Layer, seen: int, power_loss: bool = False, has_parent: bool = False
) -> Recovery:
    """Settle the head after an unclean shutdown. The complete-through generation in the
    header is left as it is.

    A killed process (``power_loss`` false): the blocks with a write in flight
    (``cur != pend``) are read and settled as their old or their new content.

    A machine crash (``power_loss``): a block's record page and its data page may come from
    different moments (the kernel writes pages back in no set order), so EVERY data block
    is read and checked. One that matches neither checksum is torn; assuming the device
    writes a 4 KiB page atomically, its data page holds its value at the last FLUSH or one
    written after it, so that value is adopted (``cur = pend = its CRC``, its generation
    kept). A data page that is a hole (never written back) held zeros at the flush when the
    head has no parent (adopted as zeros); with a parent the value is unknown: the block is
    left failing its check (reported, repaired from a replica that has it) and counted lost.
    """
    if not power_loss:
        return _settle_in_flight(head, seen)
    top = seen
    settled = adopted = lost = 0
    buf = bytearray(VERIFY_STEP * BLOCK_SIZE)
    mv = memoryview(buf)
    for a, b in list(head.record_ranges(0, head.nblocks)):
        for lo in range(a, b, VERIFY_STEP):
            hi = min(b, lo + VERIFY_STEP)
            meta = head.meta[lo:hi]
            top = max(top, int((meta >> fmt.GEN_SHIFT).max()))
            for s, e in runs((meta & np.uint64(fmt.STATE_MASK)) == fmt.DATA):
                part = mv[s * BLOCK_SIZE : e * BLOCK_SIZE]
                head.pread_into(lo + s, part)
                got = block_crcs(part)
                sl = slice(lo + s, lo + e)
                cur, pend = head.cur[sl], head.pend[sl]
                off = (got != cur) | (got != pend)
                for i in np.flatnonzero(off).tolist():
                    c, lba = int(got[i]), lo + s + i
                    if c not in (int(cur[i]), int(pend[i])):
                        if has_parent and _data_hole(head, lba):
                            lost += 1
                            continue
                        adopted += 1
                    else:
                        settled += 1
                    head.cur[lba] = head.pend[lba] = c
    head.sync()
    return Recovery(top, settled, adopted, lost)


def _settle_in_flight(head: Layer, seen: int) -> Recovery:
    top = seen
    fixed = 0
    buf = bytearray(BLOCK_SIZE)
    for a, b in head.record_ranges(0, head.nblocks):
        for lo in range(a, b, CHUNK):
            hi = min(b, lo + CHUNK)
            meta = head.meta[lo:hi]
            if meta.size:
                top = max(top, int((meta >> fmt.GEN_SHIFT).max()))
            check = head.cur[lo:hi] != head.pend[lo:hi]
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
                    continue
                fixed += 1
    head.sync()
    return Recovery(top, fixed)


def _data_hole(layer: Layer, lba: int) -> bool:
    """Whether block ``lba``'s data page was never written back (a hole in its segment),
    told by SEEK_DATA, not by its content: a page of zeros may have been written."""
    k, rel = divmod(lba, fmt.SEGMENT_BLOCKS)
    off = fmt.HEADER_SIZE + rel * BLOCK_SIZE
    try:
        return os.lseek(layer.data_fds[k], off, SEEK_DATA) >= off + BLOCK_SIZE
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data after it: a hole to the end
            return True
        raise


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
