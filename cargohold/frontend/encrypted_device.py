"""An encrypted volume as a BlockDevice: the engine's NBD server serves this in front of
the replicated volume when the volume is encrypted (``engine/daemon.py``, ``--data-key-fd``).

The volume below (the *physical* device: the engine's ``Volume``) holds groups of 64
ciphertext blocks and one tag block (``encryption/layout.py``); this device serves the
*logical* blocks: it encrypts before the fan-out and authenticates and decrypts after the
read (``encryption/block_cipher.py``). Replicas, rebuilds, snapshots, scrub and backups see
ciphertext and tags only. docs/encryption.md argues the construction; here:

- **Tag blocks** are cached (``TagBlock``, ``tag_block.py``: an LRU of at most
  ``cache_blocks`` tag blocks of 4 KiB, 4 MiB by default, which covers 256 MiB of the
  volume's data). The cached copy is authoritative while the engine runs: every change to
  a tag block is made here, in memory, and then written. A tag block with changes pending
  is never evicted. A snapshot revert empties it; a write that put its tags into a copy
  from before the revert starts over on the reverted tag blocks (``_check_layout``).
- **A write** waits for earlier writes of the same blocks (``_claim``), takes the next
  version, encrypts, puts each block's new tag into the slot that does not hold its newest
  version, and queues the tag block and then the ciphertext back to back on every replica
  (``Volume.write_ordered``: one round trip; each replica applies them in order and
  refuses the data if the tag write failed). The tag block's snapshot is taken when it is
  queued, so one queued later holds every earlier change; a write whose change a snapshot
  queued before it already holds queues only its data. A FUA write (and TRIM, zeroes, a
  repair) writes the tag block and waits for it first (``_commit``: one write of it in
  flight, the changes made meanwhile in the next); its data is queued only onto the tag
  blocks it acknowledged, never after a revert rolled them back
  (``encrypted_tags_first.py``). A crash between the tag and the data leaves the old
  slot authenticating the old data: each block reads old or new (docs/encryption.md,
  "Crashes"). The common write (aligned, no FUA, its tag blocks
  cached, nothing claimed, nothing held) does the same without a task, from callbacks
  (``write_nowait``, ``encrypted_write_callbacks.py``).
- Whole groups of a write go as one physical extent (ciphertext and their tag blocks, the
  tags written once before it as well), the partial group before them on its own.
- **After the data of a write is acknowledged**, the block's older slot is *retired* at
  the next write of its tag block (lazily): a replay of the previous version stops
  authenticating then.
- **TRIM and WRITE_ZEROES** record a ZERO slot for each block (whole groups get a fresh
  tag block, nothing read), then release the ciphertext (TRIM of the data blocks;
  ``encrypted_zeroes.py``).
- **A block that authenticates under no slot** is read again from every other current
  replica (``copies``: ``engine/copies.py``); a copy that authenticates is returned and
  written back (data block and tag entry), and the failure is counted
  (``authentication_errors``, ``authentication_repaired``). Authenticating nowhere: a
  ``ChecksumError`` (EIO), as for rot found on every replica (``encrypted_repair.py``).
- **The key check** (``check_key``, at start): the first written group is read and at
  least one of its blocks must authenticate; otherwise the key is not this volume's and
  every write is refused (``WrongDataKey``) while reads fail authentication: nothing is
  ever written with a wrong key.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import (
    ENTRY,
    TAG_BYTES,
    BlockCipher,
    may_be_unwritten,
    version_of,
)
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import ChecksumError, WrongDataKey
from cargohold.frontend.device import BlockDevice
from cargohold.frontend.encrypted_claims import Claims
from cargohold.frontend.encrypted_repair import Copies, Repair
from cargohold.frontend.encrypted_tags_first import Ordered, TagsFirst
from cargohold.frontend.encrypted_write_callbacks import CallbackWrites, Reverted
from cargohold.frontend.encrypted_zeroes import ZeroWrites
from cargohold.frontend.key_check import first_group_refusing
from cargohold.frontend.tag_block import TagBlock

log = logging.getLogger("cargohold.engine")

CACHE_BLOCKS = 1024  # tag blocks cached: 4 MiB, covering 256 MiB of data
STATUS_GROUPS = 64  # groups one BLOCK_STATUS reply covers at most (16 MiB)


class EncryptedDevice(CallbackWrites, ZeroWrites, Repair, TagsFirst):
    """``inner`` (the physical volume) served through ``cipher``; versions ``epoch ‖ n``."""

    block_size = BLOCK

    def __init__(
        self,
        inner: BlockDevice,
        cipher: BlockCipher,
        epoch: int,
        counters: collections.Counter[str] | None = None,
        copies: Copies | None = None,
        cache_blocks: int = CACHE_BLOCKS,
        layout_version: Callable[[], int] | None = None,
    ) -> None:
        """``layout_version``: a number that changes when the volume's content changed
        under this device (a snapshot revert; ``Volume.local.layout``): the tag cache is
        dropped then."""
        version_of(epoch, 1)  # the epoch fits in 32 bits
        self.inner = inner
        self.cipher = cipher
        self.epoch = epoch
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        self.copies = copies
        self.cache_blocks = max(cache_blocks, 4)
        self._counter = 0
        self._cache: OrderedDict[int, TagBlock] = OrderedDict()  # by group
        self._loading: dict[int, asyncio.Future[TagBlock]] = {}
        self._claimed = Claims()  # logical blocks being written
        self._stale: set[int] = set()  # groups whose cached tag block goes once unclaimed
        self.wrong_key: str | None = None
        self._layout_version = layout_version
        self._layout = layout_version() if layout_version is not None else 0

    # --- BlockDevice ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return layout.logical_size(self.inner.size)

    @property
    def read_only(self) -> bool:
        return self.inner.read_only

    @property
    def can_multi_conn(self) -> bool:
        return self.inner.can_multi_conn

    async def flush(self) -> None:
        await self.inner.flush()

    def status(self) -> dict[str, Any]:
        """The engine status's ``encryption``."""
        return {
            "cipher": "AES-256-GCM",  # version-1 blocks: AES-256-GCM-SIV
            "key_check": "failed" if self.wrong_key else "ok",
            "version_epoch": self.epoch,
            "version_counter": self._counter,
            "cached_tag_blocks": len(self._cache),
            "cache_limit_blocks": self.cache_blocks,
        }

    def _next_version(self) -> int:
        self._counter += 1
        return version_of(self.epoch, self._counter)  # InvalidArgument past 2**32 - 1

    # --- the tag cache ------------------------------------------------------------------
    def _check_layout(self) -> None:
        """Drop every cached tag block when the volume's content changed underneath (a
        snapshot revert, run inside a hold: ``engine/snapshots.py``), those with writes
        pending too: a write that put its tags into one and waits (the hold, its tag
        load, its settling read, its data after its acknowledged tags) must not queue
        it, or its data, afterwards (the pre-revert tags of its group's other blocks; its
        own, rolled back). It finds its copy gone when it queues (``_current``) and
        starts over on the reverted tag blocks."""
        if self._layout_version is None:
            return
        now = self._layout_version()
        if now != self._layout:
            self._layout = now
            self._cache.clear()
            self._stale.clear()

    def _layout_now(self) -> int:
        return self._layout_version() if self._layout_version is not None else 0

    def _current(self, tag_blocks: Mapping[int, TagBlock]) -> None:
        """Right before a write queues these tag blocks, or the data that follows them
        acknowledged (``ready``, nothing awaited until they are queued): raise
        ``Reverted`` if a revert dropped any of them."""
        self._check_layout()
        cache = self._cache
        for g, t in tag_blocks.items():
            if cache.get(g) is not t:
                raise Reverted(f"tag block {g}: the volume was reverted under a write")

    def _reverted_since(self, seen: int) -> bool:
        """Whether a revert came since ``seen`` (``_layout`` then): a write whose tag
        blocks and data went as separate requests (FUA, TRIM and WRITE_ZEROES, an older
        replica server) may have had both rolled back by it (the data is queued only
        onto tag blocks still cached: ``_current``; an older server's, maybe not)."""
        self._check_layout()
        return self._layout != seen

    async def _tags(self, g: int) -> TagBlock:
        t = self._cache.get(g)
        if t is not None:
            self._cache.move_to_end(g)
            return t
        fut = self._loading.get(g)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loading[g] = fut
        try:
            while True:  # read again if a revert came during the read: it may be older
                seen = self._layout_now()
                data = await self.inner.read(layout.tag_block(g * GROUP) * BLOCK, BLOCK)
                if self._layout_now() == seen:
                    break
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: the waiters get it
            raise
        finally:
            del self._loading[g]
        self._check_layout()
        t = self._adopt(g, data)
        fut.set_result(t)
        return t

    def _adopt(self, g: int, data: bytes | bytearray | memoryview) -> TagBlock:
        """Cache tag block ``g`` as read (unless it is cached already: that copy wins)."""
        t = self._cache.get(g)
        if t is None:
            t = self._cache[g] = TagBlock(bytes(data))
            self._evict()
        return t

    def _evict(self) -> None:
        over = len(self._cache) - self.cache_blocks
        if over <= 0:
            return
        for g in list(self._cache):
            if over <= 0:
                break
            t = self._cache[g]
            if t.busy or self._claimed.group_claimed(g):
                continue
            del self._cache[g]
            over -= 1

    async def _commit(self, g: int, t: TagBlock) -> None:
        """Return once every change made to tag block ``g`` so far is acknowledged by the
        replicas. Changes made while a write of it is in flight go in the next one."""
        want = t.applied
        while t.written < want:
            if t.writing:
                await t.done.wait()
                if t.error is not None and t.written < want:
                    raise t.error
                continue
            await self._write_tag_block(g, t)

    async def _write_tag_block(self, g: int, t: TagBlock) -> None:
        """One write of tag block ``g``: its snapshot taken when it is queued (with
        ``write_ordered``: the volume may wait first, and another write of the block may
        be queued meanwhile) so that one queued later holds every earlier change."""
        started: list[int] = []
        buf = bytearray(BLOCK)

        write = [(layout.tag_block(g * GROUP) * BLOCK, buf)]

        def ready(back_to_back: bool = False) -> list[tuple[int, Any]]:
            self._current({g: t})  # not a copy from before a revert
            upto, snap = t.snapshot()
            started.append(upto)
            buf[:] = snap
            return write

        error: BaseException | None = None
        try:
            ordered: Ordered | None = getattr(self.inner, "write_ordered", None)
            if ordered is not None:
                await ordered(write, ready)
            else:  # no other write of it is in flight (``_commit``)
                ready()
                await self.inner.write(layout.tag_block(g * GROUP) * BLOCK, memoryview(buf), False)
        except BaseException as e:
            error = e
            raise
        finally:
            if started:
                self._ended(g, t, started[0], error)

    def _ended(self, g: int, t: TagBlock, upto: int, error: BaseException | None) -> None:
        """A write of tag block ``g`` ended; after a failure the cached copy is dropped once
        none is in flight (the replicas may hold either version: read it again) and no
        write claims a block of its group (``_drop_stale``)."""
        if t.ended(upto, error) and self._cache.get(g) is t:
            self._stale.add(g)
            self._drop_stale()

    def _drop_stale(self) -> None:
        """Drop the stale cached tag blocks of groups no write claims any more. Not before:
        a write holding one (its tag put, its snapshot not yet queued: a hold) would
        queue it after another write had loaded the group's older copy from the replicas,
        and whichever landed last would lose the other's acknowledged tags."""
        for g in [g for g in self._stale if not self._claimed.group_claimed(g)]:
            self._stale.discard(g)
            t = self._cache.get(g)
            if t is not None and t.stale and not t.writing:
                del self._cache[g]

    # --- claiming blocks for a write -----------------------------------------------------
    async def _claim(self, lo: int, hi: int) -> None:
        """Wait until no write of blocks [lo, hi) is in flight, then own them."""
        while True:
            busy = self._claimed.owner(lo, hi)
            if busy is None:
                break
            await asyncio.shield(busy)
        if hi > lo:
            self._claimed.take(lo, hi, asyncio.get_running_loop().create_future())

    def _release(self, lo: int, hi: int) -> None:
        fut = self._claimed.release(lo, hi)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._stale:
            self._drop_stale()

    # --- writes --------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.wrong_key:
            raise WrongDataKey(self.wrong_key)
        self._check_layout()

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._check_writable()
        lo, hi = offset // BLOCK, (offset + len(data)) // BLOCK
        await self._claim(lo, hi)
        try:
            await self._write(lo, hi, memoryview(data).cast("B"), fua)
        finally:
            self._release(lo, hi)

    async def _write(self, lo: int, hi: int, data: memoryview, fua: bool) -> None:
        version = self._next_version()
        groups = range(lo // GROUP, (hi - 1) // GROUP + 1)
        # sealed where it will be written (``_seal``), once: a start over after a revert
        # sends the same version and ciphertext again (no nonce is sealed twice)
        head, first, extent, tags = self._seal(lo, hi, data, version)
        while True:
            self._check_layout()
            seen = self._layout
            tag_blocks = await self._put_tags(groups, lo, hi, version, tags)
            ordered = None if fua else getattr(self.inner, "write_ordered", None)
            try:
                if ordered is not None:  # tags and ciphertext back to back: one round trip
                    mine = {g: t.applied for g, t in tag_blocks.items()}
                    await self._write_ordered(
                        ordered, tag_blocks, mine, lo, head, hi, first, extent
                    )
                else:
                    await self._write_tags_first(tag_blocks, lo, head, hi, first, extent, fua)
            except Reverted:  # its tag blocks were from before a revert: nothing was queued
                self.counters["writes_restarted_by_revert"] += 1
                continue
            if not self._reverted_since(seen):
                break
            # its tag blocks went before a revert and its data too (or, with an older
            # replica server, maybe after: docs/encryption.md): again, into the reverted
            # tag blocks (the read that settles a slot finds its data either way)
            self.counters["writes_restarted_by_revert"] += 1
        for g, t in tag_blocks.items():
            a, b = max(lo, g * GROUP), min(hi, (g + 1) * GROUP)
            t.acked.update(range(a - g * GROUP, b - g * GROUP))
        self.counters["encrypted_blocks"] += hi - lo

    async def _put_tags(
        self, groups: range, lo: int, hi: int, version: int, tags: bytes
    ) -> dict[int, TagBlock]:
        """The write's new slots (``tags``: 16 bytes per block) put into the cached tag
        blocks of ``groups``, each settled first. -> the tag blocks by group."""
        if len(groups) == 1:  # the common case: no task per step
            loaded = [await self._tags(groups[0])]
        else:
            loaded = await asyncio.gather(*(self._tags(g) for g in groups))
        for g, t in zip(groups, loaded, strict=True):
            a, b = max(lo, g * GROUP), min(hi, (g + 1) * GROUP)
            await self._settle(g, t, a, b)  # before any slot of this write is put
            t.acked.difference_update(range(a - g * GROUP, b - g * GROUP))
            seals = tags[(a - lo) * TAG_BYTES : (b - lo) * TAG_BYTES]
            self.cipher.put_sealed(t.data, a - g * GROUP, version, seals)
            t.applied += 1
        return dict(zip(groups, loaded, strict=True))

    async def _write_ordered(
        self,
        ordered: Ordered,
        tag_blocks: Mapping[int, TagBlock],
        mine: Mapping[int, int],
        lo: int,
        head: int,
        hi: int,
        first: bytearray,
        extent: bytearray,
    ) -> None:
        """Each tag block, then the ciphertext (the partial first group, the extent of
        whole groups with their tag blocks in it), queued on every replica in this order
        and awaited together (``Volume.write_ordered``): each replica applies the tags
        before the data, and the data never where the tags failed (docs/encryption.md,
        "Crashes"). The tag blocks' snapshots are taken when they are queued (``ready``),
        so one queued later holds every change made before it; a partial group's tag
        block whose newest queued snapshot already holds this write's change (``mine``:
        its count of changes after it) is not queued again — that one is ahead of this
        data on every replica (merged, as concurrent writes of neighbours are when the
        volume makes them wait)."""
        bufs = {g: bytearray(BLOCK) for g in tag_blocks}
        tag_writes = [(g, layout.tag_block(g * GROUP) * BLOCK) for g in tag_blocks]
        data: list[tuple[int, Any]] = []
        if head > lo:
            data.append((layout.data_block(lo) * BLOCK, first))
        if hi > head:
            data.append((layout.data_block(head) * BLOCK, extent))
        started: list[tuple[int, TagBlock, int]] = []

        def ready(back_to_back: bool) -> list[tuple[int, Any]]:
            self._current(tag_blocks)  # not copies from before a revert
            out: list[tuple[int, Any]] = []
            for g, off in tag_writes:
                t = tag_blocks[g]
                whole = head <= g * GROUP and (g + 1) * GROUP <= hi
                if back_to_back and not whole and t.queued >= mine[g]:
                    self.counters["tag_block_writes_merged"] += 1
                    continue
                upto, snap = t.snapshot()
                started.append((g, t, upto))
                bufs[g][:] = snap
                out.append((off, bufs[g]))
            if hi > head:
                self._fill_extent(head, hi, extent, bufs)
            return out + data

        error: BaseException | None = None
        try:
            await ordered([(off, bufs[g]) for g, off in tag_writes] + data, ready)
        except BaseException as e:
            error = e
            raise
        finally:
            for g, t, upto in started:
                self._ended(g, t, upto, error)
        self.counters["tag_block_writes"] += len(started)

    async def _settle(self, g: int, t: TagBlock, a: int, b: int) -> None:
        """Empty the slots of unwritten versions before new slots (block_cipher.py)."""
        acked, data, base = t.acked, t.data, g * GROUP
        for i in range(a, b):
            j = i - base
            if j not in acked and may_be_unwritten(data, j):
                ct = await self.inner.read(layout.data_block(i) * BLOCK, BLOCK)
                if self.cipher.clear_unwritten(i, t.data, j, ct):
                    self.counters["unwritten_slots_cleared"] += 1

    # --- reads ---------------------------------------------------------------------------
    def read_now(self, offset: int, length: int) -> bytearray | None:
        """A read answered at once: every tag block cached and the data read at once by the
        volume (its local replica). Else None (then ``read``)."""
        read_now: Callable[[int, int], Any] | None = getattr(self.inner, "read_now", None)
        if read_now is None or self.wrong_key:
            return None
        self._check_layout()
        lo, hi = offset // BLOCK, (offset + length) // BLOCK
        groups = range(lo // GROUP, (hi - 1) // GROUP + 1)
        if any(g not in self._cache for g in groups):
            return None
        start = layout.data_block(lo)
        try:
            ct = read_now(start * BLOCK, (layout.data_block(hi - 1) + 1 - start) * BLOCK)
        except Exception:
            return None
        if ct is None:
            return None
        out = bytearray(length)
        if self._decrypt(lo, hi, start, ct, out, self._cache):
            return None  # a block failed: ``read`` tries the other replicas
        self.counters["decrypted_blocks"] += hi - lo
        return out

    async def read(self, offset: int, length: int) -> bytearray:
        self._check_layout()
        lo, hi = offset // BLOCK, (offset + length) // BLOCK
        groups = range(lo // GROUP, (hi - 1) // GROUP + 1)
        start = layout.data_block(lo)
        span = (layout.data_block(hi - 1) + 1 - start) * BLOCK
        have = {g: t for g in groups if (t := self._cache.get(g)) is not None}
        for g in have:  # used: the least recently used tag blocks go first
            self._cache.move_to_end(g)
        need = [g for g in groups if g not in have]
        if need:
            ct, loaded = await asyncio.gather(
                self.inner.read(start * BLOCK, span), asyncio.gather(*map(self._tags, need))
            )
            have.update(zip(need, loaded, strict=True))
        else:
            ct = await self.inner.read(start * BLOCK, span)
        out = bytearray(length)
        bad = self._decrypt(lo, hi, start, ct, out, have)
        if bad:
            await self._recover(bad, lo, out)
        self.counters["decrypted_blocks"] += hi - lo
        return out

    def _decrypt(
        self,
        lo: int,
        hi: int,
        start: int,
        ct: bytes | bytearray | memoryview,
        out: bytearray,
        tag_blocks: Mapping[int, TagBlock],
    ) -> list[int]:
        """Blocks [lo, hi) from the physical span read from block ``start`` into ``out``.
        -> the blocks that failed authentication."""
        mv = memoryview(ct).cast("B")
        dst = memoryview(out)
        bad: list[int] = []
        for g in range(lo // GROUP, (hi - 1) // GROUP + 1):
            a, b = max(lo, g * GROUP), min(hi, (g + 1) * GROUP)
            p = (layout.data_block(a) - start) * BLOCK
            tags = tag_blocks[g].data
            bad += self.cipher.open_run(
                a,
                mv[p : p + (b - a) * BLOCK],
                memoryview(tags)[(a - g * GROUP) * ENTRY : (b - g * GROUP) * ENTRY],
                dst[(a - lo) * BLOCK : (b - lo) * BLOCK],
            )
        return bad

    # --- block status ------------------------------------------------------------------
    async def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The physical extents of the data blocks, mapped to logical blocks (at most
        ``STATUS_GROUPS`` groups per reply)."""
        lo = offset // BLOCK
        hi = min((offset + length) // BLOCK, (lo // GROUP + STATUS_GROUPS) * GROUP)
        start = layout.data_block(lo)
        end = layout.data_block(hi - 1) + 1
        runs = await self.inner.block_status(start * BLOCK, (end - start) * BLOCK)
        out = layout.logical_runs(start, runs)
        if not out:
            raise ChecksumError("block status: nothing reported")  # pragma: no cover
        return out

    # --- the key check -----------------------------------------------------------------
    async def check_key(self) -> bool:
        """At start (``key_check.py``): False when the key does not authenticate the
        volume's first written group; then ``wrong_key`` says so and every write is
        refused from now on. A blank volume passes."""
        g = await first_group_refusing(self.inner, self.cipher)
        if g is None:
            return True
        self.wrong_key = (
            f"the data key does not authenticate this volume (no block of group {g}, "
            "its first written one, authenticates under it): it is another volume's key "
            "or a wrong one; writes are refused so that nothing is written with it"
        )
        log.error("encrypted volume: %s", self.wrong_key)
        return False
