"""The tag entries of an encrypted volume: the codec of the 64-byte entry that authenticates
each 4 KiB block's newest versions, and the rules for putting, retiring and reading its two
slots (docs/formats/encrypted-volume.md; the construction: block_cipher.py's docstring and
docs/encryption.md). ``block_cipher`` re-exports every name here.

A tag entry (``ENTRY`` = 64 bytes) has two slots of ``SLOT`` = 32 bytes: version (u64 LE,
0 = empty), tag (16), flags (u8: ``ZERO``, ``RETIRED``, ``GCM``), salt (6; zero in a
version-1 slot), 1 reserved zero byte. A write puts its tag into the slot that does not
hold the newest version (``put_slot``, ``put_slots``); after its data is acknowledged the
older slot is retired (``retire_older``). Sans-I/O: bytes in, bytes out; ``put_slots`` runs
in C where the block cipher's extension is built (``native.py``), with the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cargohold.encryption import native
from cargohold.encryption.layout import ENTRY, GROUP

TAG_BYTES = 16
SLOT = 32  # two slots per ENTRY
SALT_BYTES = 6  # a version-2 slot's salt: its incarnation's derived key
SLOT_STRUCT = struct.Struct("<Q16sB6sx")  # version, tag, flags, salt, reserved
ENTRY_STRUCT = struct.Struct("<Q16sB6sxQ16sB6sx")  # both slots
ENTRY_VF = struct.Struct("<Q16xB7xQ16xB7x")  # both slots' versions and flags only
ZERO = 0x01  # the slot authenticates "zeros at this version"; the ciphertext is ignored
RETIRED = 0x02  # an older slot given up after a newer version was written: never accepted
GCM = 0x04  # a version-2 slot: AES-256-GCM under the key its salt and epoch derive
RETIRED_VERSION = 1  # below every real version (the epoch is at least 1)
EMPTY_SLOT = bytes(SLOT)
NO_SALT = bytes(SALT_BYTES)

assert SLOT_STRUCT.size == SLOT and 2 * SLOT == ENTRY


@dataclass(frozen=True)
class Slot:
    version: int
    tag: bytes
    flags: int = 0
    salt: bytes = NO_SALT  # version-2 (GCM) slots: the sealing incarnation's

    @property
    def gcm(self) -> bool:
        return bool(self.flags & GCM)

    @property
    def zero(self) -> bool:
        return bool(self.flags & ZERO)

    @property
    def retired(self) -> bool:
        return bool(self.flags & RETIRED)


RETIRED_SLOT = Slot(RETIRED_VERSION, bytes(TAG_BYTES), RETIRED)


def decode_slot(buf: bytes | bytearray | memoryview) -> Slot | None:
    """One slot's 32 bytes -> the Slot, or None when it is empty (version 0)."""
    version, tag, flags, salt = SLOT_STRUCT.unpack(buf)
    if version == 0:
        return None
    return Slot(version, bytes(tag), flags, bytes(salt))


def encode_slot(slot: Slot | None) -> bytes:
    if slot is None:
        return EMPTY_SLOT
    return SLOT_STRUCT.pack(slot.version, slot.tag, slot.flags, slot.salt)


def decode_entry(buf: bytes | bytearray | memoryview) -> tuple[Slot | None, Slot | None]:
    """A tag entry's 64 bytes -> its two slots (None: empty)."""
    return decode_slot(buf[:SLOT]), decode_slot(buf[SLOT:ENTRY])


def newest_first(entry: tuple[Slot | None, Slot | None]) -> list[Slot]:
    """The slots that may authenticate, newest first (not empty, not retired)."""
    return sorted((s for s in entry if s is not None and not s.retired), key=lambda s: -s.version)


def _newest_is_a(va: int, fa: int, vb: int, fb: int) -> bool | None:
    """Of a tag entry's two slots (versions, flags), whether the newest live one (neither
    empty nor retired) is the first; None when neither is live. Equal versions: the first,
    as ``newest_first``'s stable sort has it."""
    a_live = va != 0 and not fa & RETIRED
    b_live = vb != 0 and not fb & RETIRED
    if a_live:
        return not b_live or va >= vb
    return False if b_live else None


def _native_group(tags: bytes | bytearray | memoryview, j: int) -> tuple[bytes, int] | None:
    """(salt, epoch) of entry ``j``'s newest live slot if it is a version-2 slot that is
    not ZERO (the native path opens it), else None."""
    va, _, fa, sa, vb, _, fb, sb = ENTRY_STRUCT.unpack_from(tags, j * ENTRY)
    a = _newest_is_a(va, fa, vb, fb)
    if a is None:
        return None
    version, flags, salt = (va, fa, sa) if a else (vb, fb, sb)
    return (salt, version >> 32) if flags & (GCM | ZERO) == GCM else None


def put_slot(tags: bytearray | memoryview, j: int, slot: Slot) -> None:
    """Record ``slot`` as block ``j``'s newest (``j`` < GROUP) in a tag block: into the slot
    that does not hold the newest version, so the newest one survives until the new
    block is written."""
    base = j * ENTRY
    at = base + SLOT if _newest_is_a(*ENTRY_VF.unpack_from(tags, base)) else base
    SLOT_STRUCT.pack_into(tags, at, slot.version, slot.tag, slot.flags, slot.salt)


def put_slots(
    tags: bytearray | memoryview,
    j: int,
    version: int,
    seals: bytes | bytearray | memoryview,
    flags: int = 0,
    salt: bytes = NO_SALT,
) -> None:
    """``put_slot`` of ``Slot(version, seal, flags, salt)`` for blocks ``j + k``, ``seals``
    being their tags, 16 bytes each, one after the other (``seal_into``'s): the slots of
    one write's blocks of one tag block, without a Slot object each (natively, one call)."""
    runs = native.runs
    if runs is not None:
        runs.put_slots(tags, j, version, seals, flags, salt)
        return
    unpack, pack = ENTRY_VF.unpack_from, SLOT_STRUCT.pack_into
    base = j * ENTRY
    sv = bytes(seals)
    for p in range(0, len(sv), TAG_BYTES):
        va, fa, vb, fb = unpack(tags, base)
        a_live = va != 0 and not fa & RETIRED
        into_b = a_live and (vb == 0 or fb & RETIRED or va >= vb)
        pack(tags, base + SLOT if into_b else base, version, sv[p : p + TAG_BYTES], flags, salt)
        base += ENTRY


RETIRED_HEAD = SLOT_STRUCT.pack(RETIRED_VERSION, bytes(TAG_BYTES), RETIRED, NO_SALT)[:-1]


def retire_older(tags: bytearray | memoryview, j: int) -> bool:
    """Retire the older slot of block ``j`` (after its newest version's data is written):
    a replay of the previous version stops authenticating, and the block is marked
    written (an empty slot beside a zeroed ciphertext would read as never written).
    -> True if the entry changed."""
    base = j * ENTRY
    a_newest = _newest_is_a(*ENTRY_VF.unpack_from(tags, base))
    if a_newest is None:
        return False
    at = base + SLOT if a_newest else base
    if tags[at : at + SLOT - 1] == RETIRED_HEAD:  # the reserved last byte is not read
        return False
    tags[at : at + SLOT] = RETIRED_HEAD + b"\0"
    return True


def may_be_unwritten(tags: bytes | bytearray | memoryview, j: int) -> bool:
    """Whether block ``j``'s newest slot in a tag block may hold a version whose data never
    landed (``BlockCipher.clear_unwritten`` tells, from the ciphertext): a live data slot
    whose other slot is not retired (retirement comes only after the newest data was
    written). The engine asks before the first write of a block it has not written."""
    va, fa, vb, fb = ENTRY_VF.unpack_from(tags, j * ENTRY)
    a_newest = _newest_is_a(va, fa, vb, fb)
    if a_newest is None:  # never written
        return False
    newest_flags, other_version, other_flags = (fa, vb, fb) if a_newest else (fb, va, fa)
    if newest_flags & ZERO:  # a ZERO slot holds whatever the data
        return False
    return other_version == 0 or not other_flags & RETIRED


def entry_versions(tags: bytes | bytearray | memoryview) -> list[int]:
    """The newest version recorded in each of a tag block's entries (0: never written)."""
    out = []
    for j in range(GROUP):
        slots = newest_first(decode_entry(tags[j * ENTRY : (j + 1) * ENTRY]))
        out.append(slots[0].version if slots else 0)
    return out
