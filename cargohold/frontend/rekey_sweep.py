"""Data-key rotation by rewriting, in the engine: the keys an encrypted volume's engine holds
(the ``data-keys`` control op, ``engine/control.py``) and the background *sweep* that
re-seals every written block still under an older key with the newest one.

The engine's wiring (``engine/daemon.py``) makes one ``Rekey`` per encrypted volume, over
its ``EncryptedDevice``; its ``status`` is the engine status's ``rekey`` section, which the
node agent forwards to the manager. docs/encryption.md, "Rotating the data key", argues it;
in short:

- ``install(keys)`` (newest first, 1..``MAX_KEYS``) swaps the device's cipher between
  requests (a write seals under the cipher it started with). Refused, nothing changed: a
  key of the wrong length or twice in the list; the newest key held now left out (blocks
  are sealed under it); an older key left out while the sweep has not finished; a key
  already held (not the newest) made the newest (a reorder). The same list again changes
  nothing (but retries a sweep that failed).
- With more than one key the sweep runs, group by group (64 blocks): it claims the group's
  blocks as a write does (a foreground write of them waits, and one in flight finishes
  first), reads the ciphertext and the tag entries, and for every block whose newest
  authenticating slot is under an older key writes its plaintext again through the
  device's own write path (``EncryptedDevice._write``: a new version, the tags first, then
  the data), or a ZERO slot again for a zeroed block (``_zero_group``). Never-written
  blocks are left alone, and groups whose tag block was never written (block status: a
  hole) are skipped unread. A block that authenticates under no key is read through the
  device first (repaired from another replica), then its group swept again; still bad:
  the sweep fails and says which block.
- Between groups it keeps to ``rekey_bandwidth`` and yields to the consumer (``pace``,
  from the engine: ``engine/background.py``). At the end a flush: ``done`` means every
  written block of the volume's head is under the newest key, durably.
- Crash safety is the write path's: each block reads its old or its new content after a
  crash at any point, and a sweep started again (the agent hands a new engine all keys)
  finds the groups already done under the newest key and only reads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import (
    ENTRY,
    KEY_BYTES,
    MAX_KEYS,
    BlockCipher,
    decode_entry,
    newest_first,
)
from cargohold.encryption.layout import BLOCK, GROUP
from cargohold.errors import CargoholdError, InvalidArgument, WrongState
from cargohold.frontend.device import STATE_HOLE
from cargohold.frontend.encrypted_device import EncryptedDevice

log = logging.getLogger("cargohold.engine")

STATUS_BATCH = 64  # groups one block-status request looks at (16 MiB of data)

# after each group: (bytes read and written, requests of the sweep's own) -> keeps to the
# cap and yields to the consumer (engine/background.py's Pace.chunk)
Pace = Callable[[int, int], Awaitable[None]]


class Rekey:
    """The data keys of one encrypted volume's engine, and their sweep."""

    def __init__(
        self,
        dev: EncryptedDevice,
        keys: Sequence[bytes],
        pace: Pace | None = None,
        own_ops: Callable[[], int] | None = None,
        layout_version: Callable[[], int] | None = None,
    ) -> None:
        """``keys``: those ``dev``'s cipher was made with (newest first). ``own_ops``: the
        volume's count of requests done (the sweep's moves of it are its own, told to
        ``pace``). ``layout_version``: changes on a snapshot revert (a done sweep is
        started again: the reverted content may be under an older key)."""
        self.dev = dev
        self._keys: tuple[bytes, ...] = tuple(bytes(k) for k in keys)
        self._pace = pace
        self._own_ops = own_ops
        self._layout_version = layout_version
        self._layout = layout_version() if layout_version is not None else 0
        self.state = "idle"
        self.groups_done = 0
        self.groups_total = 0
        self.blocks_rewritten = 0
        self.error: str | None = None
        self._run = 0  # bumped when the sweep must start over (new keys, a revert)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_group = False  # rewriting a group (close waits for it)
        self._split: tuple[tuple[bytes, ...], BlockCipher, BlockCipher | None] | None = None

    def __repr__(self) -> str:  # never the keys
        return f"Rekey(keys={len(self._keys)}, state={self.state})"

    @property
    def keys(self) -> int:
        return len(self._keys)

    def status(self) -> dict[str, Any]:
        """The engine status's ``rekey`` (no key material)."""
        self._check_revert()
        return {
            "state": self.state,
            "keys": len(self._keys),
            "groups_done": self.groups_done,
            "groups_total": self.groups_total,
            "blocks_rewritten": self.blocks_rewritten,
            "error": self.error,
        }

    def _check_revert(self) -> None:
        """A revert after ``done`` may have brought back content under an older key: sweep
        again (a sweep running notices it itself, at its end)."""
        if self.state == "done" and len(self._keys) > 1 and self._layout_changed():
            self._start()

    def _layout_changed(self) -> bool:
        if self._layout_version is None:
            return False
        now = self._layout_version()
        if now == self._layout:
            return False
        self._layout = now
        return True

    # --- the keys ------------------------------------------------------------------------
    def install(self, keys: Sequence[bytes]) -> dict[str, Any]:
        """Hold ``keys`` (newest first) from now on; the sweep starts (again) when there is
        something it may have to rewrite. InvalidArgument / WrongState name a refusal;
        nothing changed then. -> the status."""
        new = tuple(bytes(k) for k in keys)
        check_keys(new)
        if self.dev.wrong_key:
            raise WrongState(
                "the engine's key check failed at start (its keys do not authenticate the "
                "volume): start it again with the right keys"
            )
        old = self._keys
        if new == old:
            if self.state == "failed" and len(new) > 1:
                self._start()  # a retry
            return self.status()
        if new[0] != old[0] and new[0] in old:
            raise InvalidArgument(
                f"the newest key given is the engine's key #{old.index(new[0])} (0 = newest), "
                "not a new one: keys are listed newest first and may not be reordered"
            )
        if old[0] not in new:
            raise WrongState(
                "the list leaves out the newest key the engine holds: the volume's blocks are "
                "sealed under it (list it, after the new one)"
            )
        self._check_revert()
        dropped = [k for k in old if k not in new]
        if dropped and self.state != "done":
            raise WrongState(
                f"the list leaves out {len(dropped)} older key(s) while the rekey sweep is "
                f"{self.state} (blocks may still be under them): wait for state done"
            )
        # between requests: a write seals under the cipher it started with (``_write`` takes
        # it before its first await), a read opens with the new one, which holds every key a
        # block may be under (one is dropped only once the sweep is done with it)
        self.dev.cipher = BlockCipher(new, self.dev.cipher.volume_id)
        self._keys = new
        log.info("encrypted volume: %d data key(s) installed", len(new))
        only_dropped = new[0] == old[0] and set(new) <= set(old)
        if len(new) > 1 and not (only_dropped and self.state == "done"):
            self._start()
        return self.status()

    # --- the sweep -----------------------------------------------------------------------
    def start(self) -> None:
        """At the engine's start: sweep when it was given more than one key."""
        if len(self._keys) > 1:
            self._start()

    def _start(self) -> None:
        self._run += 1
        self.state = "running"
        self.error = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sweep_runs())

    async def close(self, grace: float = 5.0) -> None:
        """Stop the sweep (the engine is stopping; a new one sweeps again): once the group
        it is rewriting is done (at most ``grace`` seconds), at once when it is between
        groups (waiting for its cap or for the consumer)."""
        self._stopping = True
        self._run += 1
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + grace
        while self._in_group and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self) -> dict[str, Any]:
        """Until the sweep stopped (tests). -> the status."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
        return self.status()

    async def _sweep_runs(self) -> None:
        while not self._stopping:  # once more whenever new keys (or a revert) ask for it
            run = self._run
            try:
                if await self.sweep(run):
                    return
            except Exception as e:
                if run != self._run:
                    continue
                why = str(e) if isinstance(e, CargoholdError) else f"{type(e).__name__}: {e}"
                self.state, self.error = "failed", why
                log.error("encrypted volume: the rekey sweep failed: %s", why)
                return

    async def sweep(self, run: int) -> bool:
        """One pass over the volume. -> False when it must start over (``_run`` moved)."""
        dev = self.dev
        self.groups_done = self.groups_total = self.blocks_rewritten = 0
        if dev.read_only:  # a read-only attach (a standby inspected): nothing may change
            raise WrongState(
                "the volume is attached read-only: its blocks are rewritten under the newest "
                "key once an engine serves it read-write"
            )
        self._layout_changed()  # what is swept from here on is the content now
        # writes sealed before the keys changed: finished, their tag blocks on the replicas
        pending = dev._claimed.futures()
        if pending:
            await asyncio.gather(*(asyncio.shield(f) for f in pending))
        total = -(-dev.size // layout.GROUP_BYTES)
        self.groups_total = total
        for g0 in range(0, total, STATUS_BATCH):
            batch = range(g0, min(total, g0 + STATUS_BATCH))
            written = await self._written(batch)
            for g in batch:
                if run != self._run:
                    return False
                if dev.wrong_key:
                    raise WrongState(dev.wrong_key)
                dev._check_layout()  # a revert: the cached tag blocks are dropped
                if g in written or g in dev._cache:
                    ops = self._own_ops() if self._own_ops is not None else 0
                    before = self.blocks_rewritten
                    self._in_group = True
                    try:
                        await self._sweep_group(g)
                    finally:
                        self._in_group = False
                    if self._pace is not None:  # the group read, the blocks written
                        done = self._own_ops() - ops if self._own_ops is not None else 0
                        spent = (self.blocks_rewritten - before) * BLOCK
                        await self._pace(layout.PHYSICAL_GROUP_BYTES + spent, done)
                self.groups_done += 1
            await asyncio.sleep(0)
        await dev.flush()
        if run != self._run:
            return False
        if self._layout_changed():
            self._run += 1  # a revert meanwhile: once more over what it brought back
            return False
        self.state = "done"
        log.info(
            "encrypted volume: rekey sweep done: %d block(s) rewritten under the newest key",
            self.blocks_rewritten,
        )
        return True

    async def _written(self, groups: range) -> set[int]:
        """The groups of ``groups`` whose tag block was ever written (block status)."""
        inner = self.dev.inner
        start = groups[0] * layout.PHYSICAL_GROUP_BYTES
        end = (groups[-1] + 1) * layout.PHYSICAL_GROUP_BYTES
        out: set[int] = set()
        off = start
        while off < end:
            runs = await inner.block_status(off, end - off)
            if not runs:
                break
            for n, flags in runs:
                if not flags & STATE_HOLE:
                    for g in groups:
                        tag = layout.tag_block(g * GROUP) * BLOCK
                        if off <= tag < off + n:
                            out.add(g)
                off += n
        return out

    async def _sweep_group(self, g: int) -> None:
        """Re-seal group ``g``'s blocks under an older key; a block that authenticates
        nowhere is read through the device (repaired from another copy), then once more."""
        bad = await self._rewrite_group(g)
        if not bad:
            return
        for i in bad:
            await self.dev.read(i * BLOCK, BLOCK)  # repairs, or ChecksumError
        bad = await self._rewrite_group(g)
        if bad:
            raise self.dev.cipher.check_error(bad, "rekey sweep")

    def _ciphers(self) -> tuple[BlockCipher, BlockCipher | None]:
        """The newest key alone, and the older ones (None: there are none)."""
        if self._split is None or self._split[0] != self._keys:
            vid = self.dev.cipher.volume_id
            older = BlockCipher(self._keys[1:], vid) if len(self._keys) > 1 else None
            self._split = (self._keys, BlockCipher(self._keys[0], vid), older)
        return self._split[1], self._split[2]

    async def _rewrite_group(self, g: int) -> list[int]:
        """-> the blocks that authenticate under no key (left as they are)."""
        dev = self.dev
        lo = g * GROUP
        hi = min(lo + GROUP, dev.size // BLOCK)
        await dev._claim(lo, hi)
        cached = g in dev._cache  # else dropped again after: the consumer's stay cached
        try:
            t = await dev._tags(g)
            ct = await dev.inner.read(layout.data_block(lo) * BLOCK, (hi - lo) * BLOCK)
            newest, older = self._ciphers()
            todo: list[tuple[int, bytes | None]] = []  # (block, plaintext; None: zeros)
            bad: list[int] = []
            for i in range(lo, hi):
                j = i - lo
                entry = t.data[j * ENTRY : (j + 1) * ENTRY]
                data = ct[j * BLOCK : (j + 1) * BLOCK]
                # the newest slot that authenticates, as ``BlockCipher.key_index`` finds it,
                # with one AEAD call per key tried: under the newest key (nothing to do), or
                # under an older one (its plaintext, to seal again)
                found = False
                for n, slot in enumerate(newest_first(decode_entry(entry))):
                    if newest.try_open(i, slot, data) is not None:
                        found = True
                        break
                    plain = older.try_open(i, slot, data) if older is not None else None
                    if plain is not None:
                        todo.append((i, None if slot.zero else plain))
                        if n == 0:  # its newest version's data is there: the write
                            t.acked.add(j)  # need not read it again (``_settle``)
                        found = True
                        break
                if not found and dev.cipher.open_block(i, data, entry) is None:
                    bad.append(i)  # else never written (or its first write cut short)
            # runs of neighbours of one kind: one write (or one zeroing) each
            runs: list[tuple[int, int, list[bytes | None]]] = []
            for i, plain in todo:
                last = runs[-1] if runs else None
                if last and last[1] == i and (last[2][-1] is None) == (plain is None):
                    runs[-1] = (last[0], i + 1, [*last[2], plain])
                else:
                    runs.append((i, i + 1, [plain]))
            for a, b, plains in runs:
                if plains[0] is None:
                    await dev._zero_group(g, a, b, dev._next_version())
                else:
                    joined = b"".join(p for p in plains if p is not None)
                    await dev._write(a, b, memoryview(joined), False)
                self.blocks_rewritten += b - a
                dev.counters["rekey_rewritten_blocks"] += b - a
            return bad
        finally:
            dev._release(lo, hi)
            mine = dev._cache.get(g)
            if not cached and mine is not None and not mine.busy:
                del dev._cache[g]


def check_keys(keys: Sequence[bytes]) -> None:
    """InvalidArgument unless ``keys`` is 1..MAX_KEYS distinct keys of KEY_BYTES bytes."""
    if not 1 <= len(keys) <= MAX_KEYS:
        raise InvalidArgument(f"data-keys: 1 to {MAX_KEYS} keys, not {len(keys)}")
    for n, key in enumerate(keys):
        if len(key) != KEY_BYTES:
            raise InvalidArgument(f"data-keys: key #{n} is {len(key)} bytes, not {KEY_BYTES}")
    if len(set(keys)) != len(keys):
        raise InvalidArgument("data-keys: a key is listed twice")
