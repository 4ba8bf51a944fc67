"""The encrypting device's writes without a task (a mixin of ``EncryptedDevice``,
``encrypted_device.py``): ``write_nowait``, which the NBD frontend calls for aligned writes
(``BlockDevice.write_nowait``, ``frontend/device.py``), and the sealing both write paths
share (``_seal``, ``_fill_extent``).

``EncryptedDevice.write`` is a coroutine: per NBD write the frontend made a task, and the
claim, the tag cache, the ordered write and its futures were coroutines under it.
``write_nowait`` does the common case with plain calls and callbacks: an aligned write
without FUA whose groups' tag blocks are cached, whose blocks no other write claims and
need no settling (no slot of a version that may not have landed: ``_settle``), on a volume
below that can start an ordered write at once (``Volume.write_ordered_nowait``: nothing
held, no rebuild step over it, every replica's server stopping a session at a failed
mutation). It seals, and when the volume starts the write (``ready``, no await between)
claims the blocks, puts the new tags into the cached tag blocks and snapshots them: each
tag block and then the ciphertext are queued back to back on every replica in one round
trip, exactly as ``_write_ordered`` queues them, and ``done`` is called once they are on the
write quorum (or with the error). Everything else returns False, and the frontend awaits
``write`` (the task path), which waits, settles, loads and commits as it always did. The
ordering, crash, failure and repair rules are the task path's (docs/encryption.md,
"Crashes"): a failed write of a tag block makes the cached copy stale (``_ended``), the
blocks' older slots are retired only after their data was acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cargohold.buffers import uninitialized
from cargohold.encryption import layout
from cargohold.encryption.block_cipher import TAG_BYTES, may_be_unwritten
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import CargoholdError, ReplicaIOError

if TYPE_CHECKING:
    import collections
    from collections import OrderedDict

    from cargohold.encryption.block_cipher import BlockCipher
    from cargohold.frontend.device import BlockDevice
    from cargohold.frontend.encrypted_claims import Claims
    from cargohold.frontend.tag_block import TagBlock

Done = Callable[[Exception | None], None]
_EMPTY = bytearray()  # never written to: ``_seal``'s part with no blocks
_TAG_BLOCK_SIZED = memoryview(bytes(BLOCK))  # a tag block's length, before its snapshot


class Reverted(ReplicaIOError):
    """A write's tag blocks were cached before a snapshot revert and are about to be
    queued after it (``EncryptedDevice._current``, from the ``ready`` of a write that
    waited): nothing was queued; the write starts over on the reverted tag blocks. A
    write without a task never raises it: it looks at the layout and queues with no
    await between, and the volume starts nothing while a revert's hold is in place."""


class CallbackWrites:
    if TYPE_CHECKING:
        inner: BlockDevice
        cipher: BlockCipher
        counters: collections.Counter[str]
        wrong_key: str | None
        _cache: OrderedDict[int, TagBlock]
        _claimed: Claims

        def _check_layout(self) -> None: ...
        def _next_version(self) -> int: ...
        def _release(self, lo: int, hi: int) -> None: ...
        def _ended(self, g: int, t: TagBlock, upto: int, error: BaseException | None) -> None: ...

    def write_nowait(self, offset: int, data: memoryview, fua: bool, done: Done) -> bool:
        """Start the write of ``data`` at ``offset`` without a task: ``done(None)`` once its
        tag blocks and ciphertext are on the write quorum, else ``done(error)``; never
        before this returns. False: nothing was started (module doc)."""
        start: Callable[..., bool] | None = getattr(self.inner, "write_ordered_nowait", None)
        if fua or self.wrong_key or start is None:
            return False
        self._check_layout()
        lo, hi = offset // BLOCK, (offset + len(data)) // BLOCK
        claimed = self._claimed
        if hi <= lo or claimed.owner(lo, hi) is not None:
            return False  # nothing to write, or another write owns a block: it waits
        cache = self._cache
        tag_blocks: dict[int, TagBlock] = {}
        for g in range(lo // GROUP, (hi - 1) // GROUP + 1):
            t = cache.get(g)
            if t is None:
                return False
            cache.move_to_end(g)  # used: the least recently used tag blocks go first
            base = g * GROUP
            acked, tags = t.acked, t.data
            for j in range(max(lo, base) - base, min(hi, base + GROUP) - base):
                if j not in acked and may_be_unwritten(tags, j):
                    return False  # ``_settle`` reads its ciphertext first: the task path
            tag_blocks[g] = t
        try:
            version = self._next_version()
        except CargoholdError:
            return False  # the task path raises it
        head, first, extent, seals = self._seal(lo, hi, memoryview(data).cast("B"), version)
        # the ranges the volume checks before ``ready`` (a rebuild step's window); the tag
        # blocks' bytes are the snapshots ``ready`` takes, sent as they are (no copy)
        tag_offsets = {g: layout.tag_block(g * GROUP) * BLOCK for g in tag_blocks}
        writes: list[tuple[int, Any]] = [(off, _TAG_BLOCK_SIZED) for off in tag_offsets.values()]
        if head > lo:
            writes.append((layout.data_block(lo) * BLOCK, first))
        if hi > head:
            writes.append((layout.data_block(head) * BLOCK, extent))
        started: list[tuple[int, TagBlock, int]] = []

        def ready(back_to_back: bool) -> list[tuple[int, Any]]:
            # the volume queues them right after this, with no await between
            claimed.take(lo, hi, asyncio.get_running_loop().create_future())
            put = self.cipher.put_sealed
            snaps: dict[int, bytes] = {}
            for g, t in tag_blocks.items():
                base = g * GROUP
                a, b = max(lo, base), min(hi, base + GROUP)
                if t.acked:
                    t.acked.difference_update(range(a - base, b - base))
                put(t.data, a - base, version, seals[(a - lo) * TAG_BYTES : (b - lo) * TAG_BYTES])
                t.applied += 1
                upto, snaps[g] = t.snapshot()
                started.append((g, t, upto))
            if hi > head:
                self._fill_extent(head, hi, extent, snaps)
            queued = [(tag_offsets[g], snap) for g, snap in snaps.items()]
            queued += writes[len(snaps) :]
            return queued

        def finished(error: Exception | None) -> None:
            try:
                for g, t, upto in started:
                    self._ended(g, t, upto, error)
                if error is None:
                    for g, t in tag_blocks.items():
                        base = g * GROUP
                        t.acked.update(range(max(lo, base) - base, min(hi, base + GROUP) - base))
                    self.counters["tag_block_writes"] += len(started)
                    self.counters["encrypted_blocks"] += hi - lo
            finally:
                self._release(lo, hi)
            done(error)

        if not start(writes, ready, finished):
            return False
        self.counters["encrypted_writes_nowait"] += 1
        return True

    def _seal(
        self, lo: int, hi: int, data: memoryview, version: int
    ) -> tuple[int, bytearray, bytearray, bytes]:
        """Blocks [lo, hi) of ``data`` sealed at ``version`` where they will be written: the
        partial first group alone (``first``), the rest in the layout of its physical
        extent, with room for the tag blocks in it (``extent``, from block ``head``), in
        one call of the cipher each (``seal_into``; the buffers not zeroed first: it fills
        them). -> (head, first, extent, the blocks' tags joined, 16 bytes each)."""
        head = min(hi, -(-lo // GROUP) * GROUP) if lo % GROUP else lo
        first = extent = _EMPTY
        tags = b""
        if head > lo:
            first = uninitialized((head - lo) * BLOCK)
            tags = self.cipher.seal_into(lo, version, data[: len(first)], first)
        if hi > head:
            extent = uninitialized(layout.extent_blocks(head, hi) * BLOCK)
            tags += self.cipher.seal_into(head, version, data[(head - lo) * BLOCK :], extent, GROUP)
        return head, first, extent, tags

    @staticmethod
    def _fill_extent(
        lo: int, hi: int, extent: bytearray, tags: Mapping[int, bytes | bytearray]
    ) -> None:
        """Copy the tag blocks of the whole groups of the physical extent of blocks
        [lo, hi) (``lo`` at a group's start, sealed in place by ``_seal``) into it."""
        start = layout.data_block(lo)
        for g in range(lo // GROUP, (hi - 1) // GROUP + 1):
            if min(hi, (g + 1) * GROUP) == (g + 1) * GROUP:
                q = (layout.tag_block(g * GROUP) - start) * BLOCK
                extent[q : q + BLOCK] = tags[g]
