"""Writes of an encrypted volume whose tag blocks and ciphertext are two requests (a mixin
of ``EncryptedDevice``, ``encrypted_device.py``): a FUA write (its tag blocks written and
acknowledged, the volume flushed, then its ciphertext with FUA: data made durable has its
tags durable too) and a repair's write-back (``encrypted_repair.py``).

A snapshot revert's hold can come between the two: the tag blocks, acknowledged, are
rolled back on the replicas. Data queued after it would land on the reverted tag blocks
and authenticate under no slot until the tags were written again; a crash in between
left it so (found by ``test_encrypted_write_machine.py``). So the ciphertext is queued
only while the tag blocks it follows are still the cached ones (``_after_tags``: checked
where the volume queues it, with no await between; the revert empties the cache), else
``Reverted`` and nothing of it is queued (docs/encryption.md, "Crashes", "Snapshot
reverts").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from cargohold.encryption import layout
from cargohold.encryption.layout import BLOCK

if TYPE_CHECKING:
    import collections

    from cargohold.frontend.device import BlockDevice
    from cargohold.frontend.tag_block import TagBlock


# the volume below's ``write_ordered(writes, ready)`` (``engine/write_callbacks.py``)
Ordered = Callable[
    [list[tuple[int, Any]], Callable[[bool], list[tuple[int, Any]]]], Awaitable[None]
]


class TagsFirst:
    if TYPE_CHECKING:
        inner: BlockDevice
        counters: collections.Counter[str]

        def _current(self, tag_blocks: Mapping[int, TagBlock]) -> None: ...
        async def _commit(self, g: int, t: TagBlock) -> None: ...
        @staticmethod
        def _fill_extent(
            lo: int, hi: int, extent: bytearray, tags: Mapping[int, bytes | bytearray]
        ) -> None: ...

    async def _write_tags_first(
        self,
        tag_blocks: Mapping[int, TagBlock],
        lo: int,
        head: int,
        hi: int,
        first: bytearray,
        extent: bytearray,
        fua: bool,
    ) -> None:
        """The tag blocks written and acknowledged, then (after a flush, for FUA) the
        ciphertext: FUA writes, and a volume below without ``write_ordered``. ``Reverted``
        when a revert came before the ciphertext was queued."""
        if len(tag_blocks) == 1:
            await self._commit(*next(iter(tag_blocks.items())))
        else:
            await asyncio.gather(*(self._commit(g, t) for g, t in tag_blocks.items()))
        self.counters["tag_block_writes"] += len(tag_blocks)
        if fua:  # durable data needs durable tags: else a power loss keeps data it cannot read
            await self.inner.flush()
        # then the ciphertext: the partial first group, the rest as one extent with the
        # (written, unchanged since: every block of them is claimed) tag blocks in it
        writes: list[tuple[int, Any]] = []
        if head > lo:
            writes.append((layout.data_block(lo) * BLOCK, first))
        if hi > head:
            self._fill_extent(head, hi, extent, {g: t.data for g, t in tag_blocks.items()})
            writes.append((layout.data_block(head) * BLOCK, extent))
        await self._after_tags(tag_blocks, writes, fua)

    async def _after_tags(
        self, tag_blocks: Mapping[int, TagBlock], writes: list[tuple[int, Any]], fua: bool
    ) -> None:
        """``writes`` (ciphertext) after ``tag_blocks`` were acknowledged, each queued only
        if they are still the cached ones when the volume queues it (``_current``, from
        ``Volume.write_checked``), else ``Reverted``, that one not queued (module doc).
        Several go together: one queued before a revert landed before it (the revert's
        hold waits for it) and was rolled back with the tags, as the write starts over."""

        def ready() -> None:
            self._current(tag_blocks)

        checked = getattr(self.inner, "write_checked", None)

        def one(offset: int, buf: Any) -> Awaitable[None]:
            if checked is not None:
                return checked(offset, memoryview(buf), fua, ready)
            ready()  # a volume below that queues a write when it is called
            return self.inner.write(offset, memoryview(buf), fua)

        if len(writes) == 1:
            await one(*writes[0])
        else:
            await asyncio.gather(*(one(offset, buf) for offset, buf in writes))
