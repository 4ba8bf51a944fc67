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
- a tag entry (``ENTRY`` = 64 bytes; its codec is ``tag_entries.py``, re-exported here)
  has two slots of ``SLOT`` = 32 bytes: version (u64 LE, 0 = empty), tag (16), flags
  (u8: ``ZERO``, ``RETIRED``, ``GCM``), salt (6; zero in a version-1 slot), 1 reserved
  zero byte. A write puts its tag into the slot that does not
  hold the newest version; a read accepts the newest slot that authenticates the stored
  ciphertext (``open_block``). A ``ZERO`` slot authenticates "zeros at version v" (the tag
  of the empty plaintext under the same nonce and ad), whatever the stored ciphertext.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cargohold.encryption import native
from cargohold.encryption.layout import BLOCK, ENTRY
from cargohold.encryption.tag_entries import (
    EMPTY_SLOT,
    ENTRY_STRUCT,
    ENTRY_VF,
    GCM,
    NO_SALT,
    RETIRED,
    RETIRED_HEAD,
    RETIRED_SLOT,
    RETIRED_VERSION,
    SALT_BYTES,
    SLOT,
    SLOT_STRUCT,
    TAG_BYTES,
    ZERO,
    Slot,
    _native_group,
    decode_entry,
    decode_slot,
    encode_slot,
    entry_versions,
    may_be_unwritten,
    newest_first,
    put_slot,
    put_slots,
    retire_older,
)
from cargohold.errors import ChecksumError, InvalidArgument

__all__ = [  # the tag entries' codec (tag_entries.py) is re-exported
    "EMPTY_SLOT",
    "ENTRY_STRUCT",
    "ENTRY_VF",
    "GCM",
    "NO_SALT",
    "RETIRED",
    "RETIRED_HEAD",
    "RETIRED_SLOT",
    "RETIRED_VERSION",
    "SALT_BYTES",
    "SLOT",
    "SLOT_STRUCT",
    "TAG_BYTES",
    "ZERO",
    "BlockCipher",
    "Slot",
    "_native_group",
    "decode_entry",
    "decode_slot",
    "derive_block_key",
    "encode_slot",
    "entry_versions",
    "may_be_unwritten",
    "newest_first",
    "put_slot",
    "put_slots",
    "retire_older",
    "version_of",
]

KEY_BYTES = 32  # AES-256
ID_BYTES = 16  # the volume's encryption id
NONCE = struct.Struct(">QI")  # version, block index mod 2**32
AD_TAIL = struct.Struct(">QQ")  # block index, version (after the 16-byte id)
HKDF_INFO = b"cargohold block key v2"
EPOCH_STRUCT = struct.Struct(">I")
DERIVED_CACHE = 64  # derived AES-GCM keys kept per cipher (by key index, salt, epoch)
ZERO_BLOCK = bytes(BLOCK)
MAX_EPOCH = (1 << 32) - 1
MAX_COUNTER = (1 << 32) - 1
MAX_KEYS = 8  # data keys one volume may need at once (the current one and older ones)

NATIVE_GROUPS = 4  # (salt, epoch) groups of a run opened natively; the rest in Python
NATIVE_OPEN_MIN = 2  # blocks: one block opens as fast in Python (the C call keys a context)


def version_of(epoch: int, counter: int) -> int:
    """The version ``epoch ‖ counter`` (both u32)."""
    if not 0 < epoch <= MAX_EPOCH or not 0 < counter <= MAX_COUNTER:
        raise InvalidArgument(f"version ({epoch}, {counter}): both must be in 1..2**32-1")
    return epoch << 32 | counter


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
        # derived keys: the native path's (a ``_gcm_runs.Key``: its cipher contexts keyed
        # once; the 32 bytes where the extension is not built) and the Python path's AES-GCM
        self._derived: OrderedDict[tuple[int, bytes, int], tuple[object, AESGCM]] = OrderedDict()
        self._seal_epoch = -1
        self._seal_gcm: AESGCM | None = None
        self._seal_key: object = b""
        self._last_open: tuple[tuple[bytes, int], AESGCM] = (
            (b"", -1),
            AESGCM(bytes(KEY_BYTES)),  # matches no slot (no salt is empty)
        )
        self.salt = salt
        self.volume_id = bytes(volume_id)
        self.auth_failures = 0  # blocks that authenticated under no slot (open_block)

    def _derived_key(self, k: int, salt: bytes, epoch: int) -> tuple[object, AESGCM]:
        """The block key of data key ``k`` for the incarnation of ``salt`` in ``epoch``, as
        the native path takes it and as its AES-GCM (cached)."""
        at = (k, salt, epoch)
        got = self._derived.get(at)
        if got is None:
            key = derive_block_key(self._keys[k], self.volume_id, salt, epoch)
            built = native.built
            got = self._derived[at] = (key if built is None else built.Key(key)), AESGCM(key)
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
        """The slot of a tag this cipher sealed (``seal``, ``seal_into``, ``zero_tag``)."""
        return Slot(version, tag, GCM | ZERO if zero else GCM, self.salt)

    def seal(
        self, index: int, version: int, plaintext: bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes]:
        """One block -> (ciphertext, tag); its slot is ``slot(version, tag)``."""
        nonce, ad = self._nonce_ad(index, version)
        out = self._sealer(version).encrypt(nonce, bytes(plaintext), ad)
        return out[:BLOCK], out[BLOCK:]

    def seal_into(
        self,
        first: int,
        version: int,
        plaintext: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
        group: int = 0,
    ) -> bytes:
        """Blocks ``first, first + 1, ...`` of ``plaintext`` (a multiple of BLOCK) at one
        version: their ciphertext into ``out`` (not ``plaintext``), -> their tags, 16 bytes
        each, joined (as ``put_sealed`` takes them). ``out`` is as long as ``plaintext``;
        with ``group`` (layout.GROUP) it also holds a BLOCK-sized gap, zeroed, after each
        block ``i`` with ``(i + 1) % group == 0``: the whole groups of a physical extent
        and room for their tag blocks, sealed in one call. Natively (``native.runs``) when
        the lengths are whole: the same bytes."""
        mv = memoryview(plaintext).cast("B")
        dst = memoryview(out).cast("B")
        runs = native.runs
        if runs is not None and len(mv) % BLOCK == 0:
            self._sealer(version)
            return runs.seal_run(self._seal_key, self.volume_id, first, version, mv, dst, group)
        enc, nonce, tail = self._sealer(version).encrypt_into, NONCE.pack, AD_TAIL.pack
        n = len(mv) // BLOCK
        gaps = (first + n) // group - first // group if group else 0
        if len(dst) != (n + gaps) * BLOCK:
            raise ValueError(f"out is {len(dst)} bytes, not {(n + gaps) * BLOCK}")
        tags, spare = bytearray(n * TAG_BYTES), bytearray(BLOCK + TAG_BYTES)
        q = 0  # where block k goes in ``out``
        # each block sealed in place: its tag lands on the next block's (or gap's) first 16
        # bytes, read before they are sealed over; the last one into a spare buffer
        for k in range(n):
            i, p, t = first + k, k * BLOCK, k * TAG_BYTES
            nc, ad = nonce(version, i & 0xFFFFFFFF), self.volume_id + tail(i, version)
            if q + BLOCK + TAG_BYTES <= len(dst):
                enc(nc, mv[p : p + BLOCK], ad, dst[q : q + BLOCK + TAG_BYTES])
                tags[t : t + TAG_BYTES] = dst[q + BLOCK : q + BLOCK + TAG_BYTES]
            else:
                enc(nc, mv[p : p + BLOCK], ad, spare)
                dst[q : q + BLOCK] = memoryview(spare)[:BLOCK]
                tags[t : t + TAG_BYTES] = spare[BLOCK:]
            q += BLOCK
            if group and i % group == group - 1:
                dst[q : q + BLOCK] = ZERO_BLOCK
                q += BLOCK
        return bytes(tags)

    def put_sealed(
        self, tags: bytearray | memoryview, j: int, version: int, seals: bytes | memoryview
    ) -> None:
        """``put_slot`` of ``slot(version, seal)`` for blocks ``j + k`` of a tag block,
        ``seals`` their tags joined (``seal_into``'s)."""
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
