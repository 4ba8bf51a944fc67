"""TRIM and WRITE_ZEROES of an encrypted volume (a mixin of ``EncryptedDevice``,
``encrypted_device.py``): each block gets a ``ZERO`` slot (the tag of an empty plaintext at
a new version: "zeros at version v", whatever the ciphertext), its tag block is written
and acknowledged, then the ciphertext is released (a TRIM of the data blocks below). A
whole group gets a fresh tag block, nothing read. At most ``BULK_GROUPS`` groups at once,
one version each batch (docs/encryption.md, "TRIM and WRITE_ZEROES").

The tag block and the trim are two requests, so a snapshot revert's hold can come between
them and roll the tag block back: the trim is then not queued (``_release_data``: checked
where the volume queues it) and both go again, into the reverted tag block; a revert after
the trim was queued (both land before it, both rolled back) sends both again too
(``EncryptedDevice._reverted_since``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import ENTRY, RETIRED_SLOT, encode_slot, put_slot
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.frontend.encrypted_write_callbacks import Reverted

if TYPE_CHECKING:
    import collections
    from collections import OrderedDict
    from collections.abc import Mapping

    from cargohold.encryption.block_cipher import BlockCipher
    from cargohold.frontend.device import BlockDevice
    from cargohold.frontend.tag_block import TagBlock

BULK_GROUPS = 32  # groups of one TRIM / WRITE_ZEROES handled at once


class ZeroWrites:
    if TYPE_CHECKING:
        inner: BlockDevice
        cipher: BlockCipher
        counters: collections.Counter[str]
        _cache: OrderedDict[int, TagBlock]
        _layout: int

        def _check_writable(self) -> None: ...
        def _check_layout(self) -> None: ...
        def _current(self, tag_blocks: Mapping[int, TagBlock]) -> None: ...
        def _reverted_since(self, seen: int) -> bool: ...
        def _next_version(self) -> int: ...
        async def _claim(self, lo: int, hi: int) -> None: ...
        def _release(self, lo: int, hi: int) -> None: ...
        async def _tags(self, g: int) -> TagBlock: ...
        def _adopt(self, g: int, data: bytes | bytearray | memoryview) -> TagBlock: ...
        async def _commit(self, g: int, t: TagBlock) -> None: ...

    async def trim(self, offset: int, length: int) -> None:
        await self._zero(offset, length, False)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self._zero(offset, length, fua)

    async def _zero(self, offset: int, length: int, fua: bool) -> None:
        """ZERO slots for the blocks, then their ciphertext released."""
        self._check_writable()
        lo, hi = offset // BLOCK, (offset + length) // BLOCK
        first, last = lo // GROUP, (hi - 1) // GROUP
        for g0 in range(first, last + 1, BULK_GROUPS):
            gs = range(g0, min(last + 1, g0 + BULK_GROUPS))
            a, b = max(lo, gs[0] * GROUP), min(hi, (gs[-1] + 1) * GROUP)
            await self._claim(a, b)
            try:
                version = self._next_version()
                await asyncio.gather(*(self._zero_group(g, lo, hi, version) for g in gs))
            finally:
                self._release(a, b)
        if fua:
            await self.inner.flush()
        self.counters["zeroed_blocks"] += hi - lo

    async def _zero_group(self, g: int, lo: int, hi: int, version: int) -> None:
        a, b = max(lo, g * GROUP), min(hi, (g + 1) * GROUP)
        zero = self.cipher.zero_tag
        whole = b - a == GROUP  # the ZERO slot is enough: zeros whatever the ciphertext
        # made once: a start over after a revert puts the same slots again
        if whole:
            retired = encode_slot(RETIRED_SLOT)
            entries = [
                encode_slot(self.cipher.slot(version, zero(i, version), zero=True)) + retired
                for i in range(a, b)
            ]
        else:
            slots = [self.cipher.slot(version, zero(i, version), zero=True) for i in range(a, b)]
        while True:
            self._check_layout()
            seen = self._layout
            if whole and g not in self._cache:  # a fresh tag block: nothing to read
                t = self._adopt(g, bytes(BLOCK))
            else:
                t = await self._tags(g)
            for i in range(a, b):
                j = i - g * GROUP
                t.acked.discard(j)
                if whole:
                    t.data[j * ENTRY : (j + 1) * ENTRY] = entries[i - a]
                else:
                    put_slot(t.data, j, slots[i - a])
            t.applied += 1
            try:
                await self._commit(g, t)
                self.counters["tag_block_writes"] += 1
                await self._release_data(g, t, a, b)
            except Reverted:  # its tag block was from before a revert: not queued
                self.counters["writes_restarted_by_revert"] += 1
                continue
            if not self._reverted_since(seen):
                break
            # the tag block and the trim went before a revert, rolled back with it: again
            self.counters["writes_restarted_by_revert"] += 1
        t.acked.update(i - g * GROUP for i in range(a, b))

    async def _release_data(self, g: int, t: TagBlock, a: int, b: int) -> None:
        """The ciphertext of blocks [a, b) trimmed once their ZERO tags (in ``t``) are
        acknowledged: queued only while ``t`` is still the cached tag block (the volume's
        ``trim_checked`` calls ``_current`` right before it queues the TRIM), else
        ``Reverted``, nothing queued: a revert since rolled the tags back, and zeros landing
        after it would authenticate under no slot (module doc)."""
        offset, length = layout.data_block(a) * BLOCK, (b - a) * BLOCK
        checked = getattr(self.inner, "trim_checked", None)
        if checked is None:  # a volume below that queues a TRIM when it is called
            self._current({g: t})
            await self.inner.trim(offset, length)
        else:
            await checked(offset, length, lambda: self._current({g: t}))
