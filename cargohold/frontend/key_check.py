"""The key check of an encrypted volume's engine, at start: does the data key it was given
authenticate the volume's blocks? Called by ``EncryptedDevice.check_key``
(``encrypted_device.py``); docs/encryption.md, "The key check".

No key check value is stored (the layout has no room for one, and the blocks are a better
witness): the first written group is found with block status, read whole (its 64 blocks
and its tag block, one read), and one of its blocks, or a ZERO slot, must authenticate.
Entries that prove nothing (never written, a first write cut short by a crash) are
skipped, and so are groups with nothing to prove, up to ``KEY_CHECK_GROUPS`` of them.
"""

from __future__ import annotations

from cargohold.encryption import layout
from cargohold.encryption.block_cipher import ZERO_BLOCK, BlockCipher, decode_entry, newest_first
from cargohold.encryption.layout import BLOCK, ENTRY, GROUP
from cargohold.frontend.device import BlockDevice

KEY_CHECK_GROUPS = 64  # written groups looked at before giving up (the volume passes)


async def first_group_refusing(inner: BlockDevice, cipher: BlockCipher) -> int | None:
    """The first written group none of whose written blocks authenticates under
    ``cipher``, or None: the key fits (or there is nothing to check it against)."""
    phys = layout.logical_size(inner.size) // layout.GROUP_BYTES * layout.PHYSICAL_GROUP_BYTES
    seen = 0
    off = 0
    while off < phys and seen < KEY_CHECK_GROUPS:
        runs = await inner.block_status(off, phys - off)
        checked_to = off
        for n, flags in runs:
            if flags == 0:  # allocated: look at the groups it touches
                g = checked_to // layout.PHYSICAL_GROUP_BYTES
                g_end = (checked_to + n - 1) // layout.PHYSICAL_GROUP_BYTES
                while g <= g_end and seen < KEY_CHECK_GROUPS:
                    verdict = await _check_group(inner, cipher, g)
                    seen += 1
                    if verdict is not None:
                        return None if verdict else g
                    g += 1
            checked_to += n
        if checked_to <= off:
            break
        off = checked_to
    return None


async def _check_group(inner: BlockDevice, cipher: BlockCipher, g: int) -> bool | None:
    """True: a block of group ``g`` authenticates; False: some have tags, none does;
    None: nothing to check in it."""
    raw = await inner.read(g * (GROUP + 1) * BLOCK, (GROUP + 1) * BLOCK)
    mv = memoryview(raw).cast("B")
    tags = mv[GROUP * BLOCK :]
    tried = False
    for j in range(GROUP):
        entry = decode_entry(tags[j * ENTRY : (j + 1) * ENTRY])
        ct = mv[j * BLOCK : (j + 1) * BLOCK]
        if None in entry and ct == ZERO_BLOCK:
            continue  # never written, or a first write cut short: proves nothing
        for slot in newest_first(entry):
            tried = True
            if cipher.try_open(g * GROUP + j, slot, ct) is not None:
                return True
    return False if tried else None
