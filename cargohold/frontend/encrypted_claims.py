"""The blocks an encrypting device is writing (``EncryptedDevice._claim``): a write owns its
blocks from its tag update until its ciphertext is acknowledged, and a write of any of
them waits for it (docs/encryption.md, "Tag block snapshots").

Claims are ranges, indexed by the group (``layout.GROUP`` blocks, one tag block) each one
touches: taking, testing and releasing a claim costs one step per group, not one per
block (a dict entry per block cost the 1 MiB write three loops of 256 steps). A group
holds few claims at once (the writes in flight that touch it), so a test walks a short
list.
"""

from __future__ import annotations

import asyncio

from cargohold.encryption.layout import GROUP

Claim = tuple[int, int, "asyncio.Future[None]"]  # blocks [lo, hi), set when released


class Claims:
    """The claimed block ranges, each with the future its release sets."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[int, list[Claim]] = {}  # group -> the claims touching it

    def __bool__(self) -> bool:
        return bool(self._groups)

    def __contains__(self, block: int) -> bool:
        return self.owner(block, block + 1) is not None

    def owner(self, lo: int, hi: int) -> asyncio.Future[None] | None:
        """The future of a claim of any of blocks [lo, hi), or None."""
        groups = self._groups
        if not groups:
            return None
        g0, g1 = lo // GROUP, (hi - 1) // GROUP
        if g0 == g1:  # the common case: no range to walk
            held = groups.get(g0)
            if held is not None:
                for a, b, fut in held:
                    if a < hi and lo < b:
                        return fut
            return None
        for g in range(g0, g1 + 1):
            for a, b, fut in groups.get(g, ()):
                if a < hi and lo < b:
                    return fut
        return None

    def group_claimed(self, g: int) -> bool:
        """Whether any block of group ``g`` is claimed."""
        return g in self._groups

    def take(self, lo: int, hi: int, fut: asyncio.Future[None]) -> None:
        """Claim blocks [lo, hi) (none of them claimed: the caller checked ``owner``)."""
        claim = (lo, hi, fut)
        groups = self._groups
        g0, g1 = lo // GROUP, (hi - 1) // GROUP
        if g0 == g1:
            held = groups.get(g0)
            if held is None:
                groups[g0] = [claim]
            else:
                held.append(claim)
            return
        for g in range(g0, g1 + 1):
            held = groups.get(g)
            if held is None:
                groups[g] = [claim]
            else:
                held.append(claim)

    def release(self, lo: int, hi: int) -> asyncio.Future[None] | None:
        """Drop the claim of exactly blocks [lo, hi); -> its future (None: there was none)."""
        groups = self._groups
        found = None
        g0, g1 = lo // GROUP, (hi - 1) // GROUP
        for g in range(g0, g1 + 1) if g0 != g1 else (g0,):
            held = groups.get(g)
            if held is None:
                continue
            if len(held) == 1:  # the common case: its claim alone in the group
                claim = held[0]
                if claim[0] == lo and claim[1] == hi:
                    found = claim[2]
                    del groups[g]
                continue
            for k, claim in enumerate(held):
                if claim[0] == lo and claim[1] == hi:
                    found = claim[2]
                    del held[k]
                    break
        return found

    def futures(self) -> list[asyncio.Future[None]]:
        """The futures of every claim now, each once."""
        seen = {id(fut): fut for held in self._groups.values() for _, _, fut in held}
        return list(seen.values())
