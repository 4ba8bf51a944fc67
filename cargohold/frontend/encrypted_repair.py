"""The encrypting device's repair of a block that fails authentication (a mixin of
``EncryptedDevice``, ``encrypted_device.py``): read again (a read that raced a write and
the retirement of the slot it needed is no error), else each other current replica's copy
of the block and its tag entry (``Copies``: ``engine/copies.py``), one that authenticates
returned and written back everywhere (tag entry, then data, as a write would), else a
``ChecksumError``. Counted: ``authentication_retries``, ``authentication_errors``,
``authentication_repaired``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import ENTRY
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import RequestError
from cargohold.frontend.encrypted_write_callbacks import Reverted

if TYPE_CHECKING:
    import collections
    from collections.abc import Mapping

    from cargohold.encryption.block_cipher import BlockCipher
    from cargohold.frontend.device import BlockDevice
    from cargohold.frontend.tag_block import TagBlock

log = logging.getLogger("cargohold.engine")


class Copies(Protocol):
    """What the device needs of the volume below to repair: each current replica's copy
    of a range (``engine/copies.py``)."""

    async def read_copies(self, offset: int, length: int) -> list[tuple[str, bytes]]: ...


class Repair:
    if TYPE_CHECKING:
        inner: BlockDevice
        cipher: BlockCipher
        copies: Copies | None
        counters: collections.Counter[str]
        wrong_key: str | None

        async def _tags(self, g: int) -> TagBlock: ...
        async def _claim(self, lo: int, hi: int) -> None: ...
        def _release(self, lo: int, hi: int) -> None: ...
        async def _commit(self, g: int, t: TagBlock) -> None: ...
        def _check_layout(self) -> None: ...
        def _reverted_since(self, seen: int) -> bool: ...
        async def _after_tags(
            self, tag_blocks: Mapping[int, TagBlock], writes: list[tuple[int, Any]], fua: bool
        ) -> None: ...

        _layout: int

    async def _recover(self, bad: list[int], lo: int, out: bytearray) -> None:
        """Blocks that failed authentication: each read again (a read that raced a write
        and the retirement of the slot it needed is no error), else from another
        replica's copy that authenticates (then written back), else ChecksumError."""
        lost = []
        for i in bad:
            plain = await self._again(i)
            if plain is not None:
                self.counters["authentication_retries"] += 1
                out[(i - lo) * BLOCK : (i - lo + 1) * BLOCK] = plain
                continue
            self.counters["authentication_errors"] += 1
            plain = await self._from_copies(i)
            if plain is None:
                lost.append(i)
            else:
                out[(i - lo) * BLOCK : (i - lo + 1) * BLOCK] = plain
        if lost:
            log.error(
                "encrypted volume: %d block(s) fail authentication on every replica, first %d%s",
                len(lost),
                lost[0],
                f" ({self.wrong_key})" if self.wrong_key else "",
            )
            raise self.cipher.check_error(lost, "encrypted volume")

    async def _again(self, i: int) -> bytes | None:
        """Block ``i`` read again, under its tag entry as cached now."""
        ct = await self.inner.read(layout.data_block(i) * BLOCK, BLOCK)
        t = await self._tags(i // GROUP)
        j = i % GROUP
        return self.cipher.open_block(i, ct, t.data[j * ENTRY : (j + 1) * ENTRY])

    async def _from_copies(self, i: int) -> bytes | None:
        if self.copies is None or self.wrong_key:
            return None
        g = i // GROUP
        j = i - g * GROUP
        self._check_layout()
        seen = self._layout  # copies read before a revert are not written back after it
        try:
            datas, tagss = await asyncio.gather(
                self.copies.read_copies(layout.data_block(i) * BLOCK, BLOCK),
                self.copies.read_copies(layout.tag_block(i) * BLOCK, BLOCK),
            )
        except RequestError:
            return None
        tag_of = {rid: bytes(x) for rid, x in tagss}
        for rid, ct in datas:
            tags = tag_of.get(rid)
            if tags is None:
                continue
            entry = tags[j * ENTRY : (j + 1) * ENTRY]
            plain = self.cipher.open_block(i, ct, entry)
            if plain is None:
                continue
            await self._write_back(i, bytes(ct), entry, seen)
            return plain
        return None

    async def _write_back(self, i: int, ct: bytes, entry: bytes, seen: int) -> None:
        """Repair block ``i`` everywhere with a copy that authenticates: its tag entry (when
        the cached one differs) then its ciphertext, as a write would; not if a snapshot
        revert came since the copy was read (``seen``: it is the older content), nor its
        ciphertext after one rolled back the tag entry written (``_after_tags``)."""
        await self._claim(i, i + 1)
        try:
            if self._reverted_since(seen):
                raise Reverted("the copy was read before a snapshot revert")
            g, j = i // GROUP, i % GROUP
            t = await self._tags(g)
            if t.data[j * ENTRY : (j + 1) * ENTRY] != entry:
                t.data[j * ENTRY : (j + 1) * ENTRY] = entry
                t.applied += 1
                await self._commit(g, t)
            await self._after_tags({g: t}, [(layout.data_block(i) * BLOCK, ct)], False)
            self.counters["authentication_repaired"] += 1
            log.warning("encrypted volume: block %d repaired from another replica", i)
        except RequestError as e:  # Reverted among them: not written back
            log.warning("encrypted volume: repairing block %d failed: %s", i, e)
        finally:
            self._release(i, i + 1)
