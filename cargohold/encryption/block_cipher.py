"""The block cipher of an encrypted volume: AES-256-GCM per 4 KiB block under a key derived
for each engine incarnation (version-2 slots; version-1 slots, AES-256-GCM-SIV under the
data key itself, keep opening), and the codec of the tag entries that authenticate each
block's newest versions.

Sans-I/O: bytes in, bytes out. The engine's encrypting device
(``frontend/encrypted_device.py``) calls it on every read and write; tests and the format
sample (``docs/formats/encrypted-volume.md``) decode with it. docs/encryption.md argues the
construction; in short:

- each ``BlockCipher`` (one engine incarnation) picks a random 48-bit *salt*. Block *i*
  written at version *v* is ``AESGCM(K).encrypt(nonce(i, v), plaintext, ad(id, i, v))``
  with ``K = HKDF-SHA256(data key, info = "cargohold block key v2" ‖ id ‖ salt ‖ v >> 32
  (u32 BE))``: 4096 bytes of ciphertext (stored in the block) and a 16-byte tag (stored in
  the block's tag entry, with the salt and the ``GCM`` flag). ``nonce = v (u64 BE) ‖ i mod
  2**32 (u32 BE)``; ``ad = id (16 bytes) ‖ i (u64 BE) ‖ v (u64 BE)``. A block moved (other
  index), from another volume (other id) or replayed from another version fails
  authentication.
- a nonce never repeats under one derived key: ``v = epoch << 32 | counter``, the counter
  strictly increasing within the incarnation and each write sealing each of its blocks
  once; another incarnation has another salt (or epoch), hence another key.
- a tag entry (``ENTRY`` = 64 bytes) has two slots of ``SLOT`` = 32 bytes: version (u64 LE,
  0 = empty), tag (16), flags (u8: ``ZERO``, ``RETIRED``, ``GCM``), salt (6; zero in a
  version-1 slot), 1 reserved zero byte. A write puts its tag into the slot that does not
  hold the newest version; a read accepts the newest slot that authenticates the stored
  ciphertext (``open_block``). A ``ZERO`` slot authenticates "zeros at version v" (the tag
  of the empty plaintext under the same nonce and ad), whatever the stored ciphertext.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cargohold.encryption import native
from cargohold.encryption.layout import BLOCK, ENTRY, GROUP
from cargohold.errors import ChecksumError, InvalidArgument

KEY_BYTES = 32  # AES-256
ID_BYTES = 16  # the volume's encryption id
TAG_BYTES = 16
SLOT = 32  # two slots per ENTRY
SALT_BYTES = 6  # a version-2 slot's salt: its incarnation's derived key
SLOT_STRUCT = struct.Struct("<Q16sB6sx")  # version, tag, flags, salt, reserved
ENTRY_STRUCT = struct.Struct("<Q16sB6sxQ16sB6sx")  # both slots
ENTRY_VF = struct.Struct("<Q16xB7xQ16xB7x")  # both slots' versions and flags only
NONCE = struct.Struct(">QI")  # version, block index mod 2**32
AD_TAIL = struct.Struct(">QQ")  # block index, version (after the 16-byte id)
ZERO = 0x01  # the slot authenticates "zeros at this version"; the ciphertext is ignored
RETIRED = 0x02  # an older slot given up after a newer version was written: never accepted
GCM = 0x04  # a version-2 slot: AES-256-GCM under the key its salt and epoch derive
RETIRED_VERSION = 1  # below every real version (the epoch is at least 1)
EMPTY_SLOT = bytes(SLOT)
NO_SALT = bytes(SALT_BYTES)
HKDF_INFO = b"cargohold block key v2"
EPOCH_STRUCT = struct.Struct(">I")
DERIVED_CACHE = 64  # derived AES-GCM keys kept per cipher (by key index, salt, epoch)
ZERO_BLOCK = bytes(BLOCK)
MAX_EPOCH = (1 << 32) - 1
MAX_COUNTER = (1 << 32) - 1
MAX_KEYS = 8  # data keys one volume may need at once (the current one and older ones)

NATIVE_GROUPS = 4  # (salt, epoch) groups of a run opened natively; the rest in Python
NATIVE_OPEN_MIN = 2  # blocks: one block opens as fast in Python (the C call keys a context)

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


def version_of(epoch: int, counter: int) -> int:
    """The version ``epoch ‖ counter`` (both u32)."""
    if not 0 < epoch <= MAX_EPOCH or not 0 < counter <= MAX_COUNTER:
        raise InvalidArgument(f"version ({epoch}, {counter}): both must be in 1..2**32-1")
    return epoch << 32 | counter


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
    seals: Sequence[bytes],
    flags: int = 0,
    salt: bytes = NO_SALT,
) -> None:
    """``put_slot`` of ``Slot(version, seals[k], flags, salt)`` for blocks ``j + k``: the
    slots of one write's blocks of one tag block, without a Slot object each."""
    unpack, pack = ENTRY_VF.unpack_from, SLOT_STRUCT.pack_into
    base = j * ENTRY
    for tag in seals:
        va, fa, vb, fb = unpack(tags, base)
        a_live = va != 0 and not fa & RETIRED
        into_b = a_live and (vb == 0 or fb & RETIRED or va >= vb)
        pack(tags, base + SLOT if into_b else base, version, tag, flags, salt)
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


def derive_block_key(data_key: bytes, volume_id: bytes, salt: bytes, epoch: int) -> bytes:
    """The AES-256-GCM key of version-2 slots sealed by the incarnation of ``salt`` in
    ``epoch``: HKDF-SHA256 (RFC 5869, no HKDF salt) of the data key, ``info`` =
    ``"cargohold block key v2" ‖ encryption id ‖ salt ‖ epoch (u32 BE)``."""
    info = HKDF_INFO + volume_id + salt + EPOCH_STRUCT.pack(epoch)
    return HKDF(hashes.SHA256(), KEY_BYTES, None, info).derive(data_key)


class BlockCipher:
    """The AEAD of one volume for one engine incarnation: its data keys, its encryption id
    and the incarnation's random salt.

    ``keys`` is one data key or several, newest first: the first seals every write; a read
    tries each in turn (the older ones are those a data-key rotation has not yet rewritten
    away, docs/keys.md). ``key_index`` tells which key a block is sealed under. Writes seal
    version-2 slots (AES-256-GCM under the key derived from the data key, ``salt`` and the
    version's epoch: ``derive_block_key``); reads open version-2 slots under the key their
    salt and epoch derive and version-1 slots (no ``GCM`` flag) with AES-256-GCM-SIV under
    the data key itself. ``salt``: 6 random bytes unless given (tests)."""

    def __init__(
        self, keys: bytes | Sequence[bytes], volume_id: bytes, salt: bytes | None = None
    ) -> None:
        keys = [keys] if isinstance(keys, bytes | bytearray) else list(keys)
        if not 1 <= len(keys) <= MAX_KEYS:
            raise InvalidArgument(f"a volume has 1 to {MAX_KEYS} data keys, not {len(keys)}")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise InvalidArgument(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        if len(volume_id) != ID_BYTES:
            raise InvalidArgument(f"an encryption id is {ID_BYTES} bytes, not {len(volume_id)}")
        salt = secrets.token_bytes(SALT_BYTES) if salt is None else bytes(salt)
        if len(salt) != SALT_BYTES:
            raise InvalidArgument(f"a block key salt is {SALT_BYTES} bytes, not {len(salt)}")
        self._keys = [bytes(key) for key in keys]
        self._aeads = [AESGCMSIV(key) for key in self._keys]  # version-1 slots
        # derived keys: the bytes (the native path's) and their AES-GCM (the Python path's)
        self._derived: OrderedDict[tuple[int, bytes, int], tuple[bytes, AESGCM]] = OrderedDict()
        self._seal_epoch = -1
        self._seal_gcm: AESGCM | None = None
        self._seal_key = b""
        self._last_open: tuple[tuple[bytes, int], AESGCM] = (
            (b"", -1),
            AESGCM(bytes(KEY_BYTES)),  # matches no slot (no salt is empty)
        )
        self.salt = salt
        self.volume_id = bytes(volume_id)
        self.auth_failures = 0  # blocks that authenticated under no slot (open_block)

    def _derived_key(self, k: int, salt: bytes, epoch: int) -> tuple[bytes, AESGCM]:
        """The block key of data key ``k`` for the incarnation of ``salt`` in ``epoch`` and
        its AES-GCM (cached)."""
        at = (k, salt, epoch)
        got = self._derived.get(at)
        if got is None:
            key = derive_block_key(self._keys[k], self.volume_id, salt, epoch)
            got = self._derived[at] = key, AESGCM(key)
            if len(self._derived) > DERIVED_CACHE:
                self._derived.popitem(last=False)
        else:
            self._derived.move_to_end(at)
        return got

    def _gcm(self, k: int, salt: bytes, epoch: int) -> AESGCM:
        """The AES-GCM of key ``k`` for the incarnation of ``salt`` in ``epoch`` (cached)."""
        return self._derived_key(k, salt, epoch)[1]

    def _sealer(self, version: int) -> AESGCM:
        epoch = version >> 32
        if epoch != self._seal_epoch or self._seal_gcm is None:
            self._seal_key, self._seal_gcm = self._derived_key(0, self.salt, epoch)
            self._seal_epoch = epoch
        return self._seal_gcm

    def _nonce_ad(self, index: int, version: int) -> tuple[bytes, bytes]:
        return (
            NONCE.pack(version, index & 0xFFFFFFFF),
            self.volume_id + AD_TAIL.pack(index, version),
        )

    # --- writes ------------------------------------------------------------------------
    def slot(self, version: int, tag: bytes, zero: bool = False) -> Slot:
        """The slot of a tag this cipher sealed (``seal``, ``seal_run``, ``zero_tag``)."""
        return Slot(version, tag, GCM | ZERO if zero else GCM, self.salt)

    def seal(
        self, index: int, version: int, plaintext: bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes]:
        """One block -> (ciphertext, tag); its slot is ``slot(version, tag)``."""
        nonce, ad = self._nonce_ad(index, version)
        out = self._sealer(version).encrypt(nonce, bytes(plaintext), ad)
        return out[:BLOCK], out[BLOCK:]

    def seal_run(
        self,
        first: int,
        version: int,
        plaintext: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
    ) -> list[bytes]:
        """Blocks ``first, first + 1, ...`` of ``plaintext`` (a multiple of BLOCK) at one
        version: their ciphertext into ``out`` (same length, not ``plaintext``), -> their
        tags. Natively (``native.runs``) when the lengths are whole: the same bytes."""
        mv = memoryview(plaintext).cast("B")
        dst = memoryview(out).cast("B")
        runs = native.runs
        if runs is not None and len(mv) % BLOCK == 0 and len(dst) == len(mv):
            self._sealer(version)
            t = runs.seal_run(self._seal_key, self.volume_id, first, version, mv, dst)
            return [t[p : p + TAG_BYTES] for p in range(0, len(t), TAG_BYTES)]
        enc = self._sealer(version).encrypt_into
        nonce, ad = NONCE.pack, self.volume_id
        tail = AD_TAIL.pack
        n = len(mv) // BLOCK
        tags = []
        # each block sealed in place: its tag lands on the next block's first 16 bytes
        # (read before that block is sealed over them); the last one into a spare buffer
        for k in range(n - 1):
            i, p = first + k, k * BLOCK
            enc(
                nonce(version, i & 0xFFFFFFFF),
                mv[p : p + BLOCK],
                ad + tail(i, version),
                dst[p : p + BLOCK + TAG_BYTES],
            )
            tags.append(bytes(dst[p + BLOCK : p + BLOCK + TAG_BYTES]))
        if n:
            i, p = first + n - 1, (n - 1) * BLOCK
            last = bytearray(BLOCK + TAG_BYTES)
            enc(nonce(version, i & 0xFFFFFFFF), mv[p : p + BLOCK], ad + tail(i, version), last)
            dst[p : p + BLOCK] = memoryview(last)[:BLOCK]
            tags.append(bytes(last[BLOCK:]))
        return tags

    def put_sealed(
        self, tags: bytearray | memoryview, j: int, version: int, seals: Sequence[bytes]
    ) -> None:
        """``put_slot`` of ``slot(version, seals[k])`` for blocks ``j + k`` of a tag block
        (``seal_run``'s tags)."""
        put_slots(tags, j, version, seals, GCM, self.salt)

    def zero_tag(self, index: int, version: int) -> bytes:
        """The tag that says "block ``index`` is zeros at ``version``" (its slot:
        ``slot(version, tag, zero=True)``)."""
        nonce, ad = self._nonce_ad(index, version)
        return self._sealer(version).encrypt(nonce, b"", ad)

    # --- reads -------------------------------------------------------------------------
    def try_open(
        self, index: int, slot: Slot, ciphertext: bytes | bytearray | memoryview
    ) -> bytes | None:
        """The plaintext if ``slot`` authenticates ``ciphertext`` as block ``index``
        (b"" for a ZERO slot: the block is zeros), else None."""
        got = self._open_slot(index, slot, ciphertext)
        return None if got is None else got[0]

    def _open_slot(
        self, index: int, slot: Slot, ciphertext: bytes | bytearray | memoryview
    ) -> tuple[bytes, int] | None:
        """(plaintext, the index of the key that authenticated it) or None."""
        nonce, ad = self._nonce_ad(index, slot.version)
        sealed = slot.tag if slot.zero else bytes(ciphertext) + slot.tag
        for k in range(len(self._keys)):
            if slot.flags & GCM:
                aead: AESGCM | AESGCMSIV = self._gcm(k, slot.salt, slot.version >> 32)
            else:
                aead = self._aeads[k]
            try:
                plain = aead.decrypt(nonce, sealed, ad)
            except InvalidTag:
                continue
            return (b"" if slot.zero else plain), k
        return None

    def key_index(
        self,
        index: int,
        ciphertext: bytes | bytearray | memoryview,
        entry: bytes | bytearray | memoryview,
    ) -> int | None:
        """Which of the keys block ``index`` is sealed under (its newest slot that
        authenticates the stored ciphertext; a ZERO slot counts too): 0 for the newest key.
        None: no slot authenticates, or the block was never written (nothing to rewrite)."""
        for slot in newest_first(decode_entry(entry)):
            got = self._open_slot(index, slot, ciphertext)
            if got is not None:
                return got[1]
        return None

    def open_block(
        self,
        index: int,
        ciphertext: bytes | bytearray | memoryview,
        entry: bytes | bytearray | memoryview,
    ) -> bytes | None:
        """Block ``index``'s plaintext from its stored ciphertext and tag entry, or None
        when it does not authenticate (counted in ``auth_failures``): ``open_run`` of one
        block."""
        out = bytearray(BLOCK)
        if len(ciphertext) != BLOCK or len(entry) != ENTRY:
            self.auth_failures += 1
            return None
        return None if self.open_run(index, ciphertext, entry, out) else bytes(out)

    def open_run(
        self,
        first: int,
        ciphertext: bytes | bytearray | memoryview,
        tags: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
    ) -> list[int]:
        """Blocks ``first, ...`` of ``ciphertext`` whose tag entries are ``tags`` (one
        ENTRY per block, in order): their plaintext into ``out``. -> the indexes of the
        blocks that failed authentication (counted in ``auth_failures``; their part of
        ``out`` is zeroed). Per block:

        - the newest slot (neither empty nor retired) that authenticates wins (a ZERO
          slot: zeros);
        - no slot authenticates, but one is empty (not retired) and the stored ciphertext
          is all zeros: the block was never written, or its first write stopped between
          the tag and the data (a crash): zeros, its old content;
        - otherwise it fails (tampered, moved, replayed, another volume's, or a wrong key).

        Natively (``native.runs``, runs of ``NATIVE_OPEN_MIN`` blocks or more): blocks whose
        newest live slot is a version-2, non-ZERO one open in C, grouped by the key of its
        salt and epoch (``NATIVE_GROUPS`` at most); the others, and those that fail there,
        by these rules in Python: the same answers.
        """
        mv = memoryview(ciphertext).cast("B")
        tv = memoryview(tags).cast("B")
        dst = memoryview(out).cast("B")
        n = len(mv) // BLOCK
        runs = native.runs
        if (
            runs is None
            or n < NATIVE_OPEN_MIN
            or len(mv) != n * BLOCK
            or len(tv) < n * ENTRY
            or len(dst) < n * BLOCK
        ):
            return self._open_run_py(first, mv, tv, dst)
        entries, into = tv[: n * ENTRY], dst[: n * BLOCK]
        todo: Sequence[int] = range(n)  # blocks no group has taken yet, in order
        failed: list[int] = []
        for _ in range(NATIVE_GROUPS):
            group = None
            for k in todo:  # the next group: the first untaken block's that goes native
                group = _native_group(entries, k)
                if group is not None:
                    break
            if group is None:
                break
            versions, tagb, others = runs.newest(entries, *group)
            key = self._derived_key(0, *group)[0]
            failed += runs.open_run(key, self.volume_id, first, versions, tagb, mv, into)
            left = set(todo)
            todo = [k for k in others if k in left]
        bad = []
        for k in sorted({*todo, *failed}) if failed else todo:
            p, e = k * BLOCK, k * ENTRY
            bad += self._open_run_py(
                first + k, mv[p : p + BLOCK], tv[e : e + ENTRY], dst[p : p + BLOCK]
            )
        return bad

    def _open_run_py(
        self, first: int, mv: memoryview, tv: memoryview, dst: memoryview
    ) -> list[int]:
        """``open_run`` in Python, block by block."""
        # the read path's hot loop: the rules of ``newest_first`` and ``try_open`` without
        # a Slot object per slot, decrypting into ``out``
        unpack, nonce_of, tail = ENTRY_STRUCT.unpack_from, NONCE.pack, AD_TAIL.pack
        vid, sivs, nkeys = self.volume_id, self._aeads, len(self._keys)
        last, last_aead = self._last_open  # key 0's AES-GCM last used, by salt and epoch
        bad = []
        for k in range(len(mv) // BLOCK):
            i, p = first + k, k * BLOCK
            va, ta, fa, sa, vb, tb, fb, sb = unpack(tv, k * ENTRY)
            use_a = va != 0 and not fa & RETIRED
            use_b = vb != 0 and not fb & RETIRED
            order: tuple[tuple[int, bytes, int, bytes], ...]
            if use_a and use_b:
                order = (
                    ((va, ta, fa, sa), (vb, tb, fb, sb))
                    if va >= vb
                    else ((vb, tb, fb, sb), (va, ta, fa, sa))
                )
            elif use_a:
                order = ((va, ta, fa, sa),)
            elif use_b:
                order = ((vb, tb, fb, sb),)
            else:
                order = ()
            ct = mv[p : p + BLOCK]
            low = i & 0xFFFFFFFF
            opened = False
            for version, tag, flags, salt in order:
                nonce, ad = nonce_of(version, low), vid + tail(i, version)
                sealed = tag if flags & ZERO else b"".join((ct, tag))
                for key in range(nkeys):  # the newest key first: one try but in a rotation
                    aead: AESGCM | AESGCMSIV
                    if not flags & GCM:
                        aead = sivs[key]
                    elif key == 0 and last == (salt, version >> 32):
                        aead = last_aead
                    else:
                        aead = self._gcm(key, salt, version >> 32)
                        if key == 0:
                            last, last_aead = (salt, version >> 32), aead
                            self._last_open = last, aead
                    try:
                        if flags & ZERO:
                            aead.decrypt(nonce, sealed, ad)
                            dst[p : p + BLOCK] = ZERO_BLOCK
                        else:
                            aead.decrypt_into(nonce, sealed, ad, dst[p : p + BLOCK])
                    except InvalidTag:
                        continue
                    opened = True
                    break
                if opened:
                    break
            if opened:
                continue
            dst[p : p + BLOCK] = ZERO_BLOCK
            if (va == 0 or vb == 0) and ct == ZERO_BLOCK:
                continue
            self.auth_failures += 1
            bad.append(i)
        return bad

    def clear_unwritten(
        self,
        index: int,
        tags: bytearray | memoryview,
        j: int,
        ciphertext: bytes | bytearray | memoryview,
    ) -> bool:
        """Empty block ``j``'s newest slot in a tag block if its data never landed (a
        crash, or a failed data write, between its tag write and its data write): the
        newest slot does not authenticate the stored ciphertext and the other one does
        (or is empty, and the ciphertext is zeros). -> True if it was emptied. Without
        this, ``put_slot`` would put the block's next slot over the *other* one, the one
        that says what the data really is, and one more write cut short the same way
        would leave no slot that authenticates the block: acknowledged data reading as
        an error on every replica (docs/encryption.md, "Crashes")."""
        base = j * ENTRY
        a, b = decode_entry(tags[base : base + ENTRY])
        live = newest_first((a, b))
        if not live or live[0].zero or self.try_open(index, live[0], ciphertext) is not None:
            return False
        other = b if a == live[0] else a
        if other is None:
            if any(ciphertext):
                return False  # neither: not a cut-short write (rot, tampering)
        elif other.retired or self.try_open(index, other, ciphertext) is None:
            return False  # neither: reads find a copy that authenticates, or fail
        at = base if a == live[0] else base + SLOT
        tags[at : at + SLOT] = encode_slot(None)
        return True

    def check_error(self, blocks: list[int], what: str) -> ChecksumError:
        """The error a read answers when blocks fail authentication on every copy."""
        more = f" (and {len(blocks) - 1} more)" if len(blocks) > 1 else ""
        return ChecksumError(
            f"{what}: block {blocks[0]}{more} fails authentication: tampered, moved, "
            "replayed, another volume's, or the wrong data key",
            blocks=blocks,
        )
