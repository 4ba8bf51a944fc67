"""The block cipher of encrypted volumes: the primitive against RFC 8452's vectors, round
trips, and every tamper class detected (docs/encryption.md, "What is detected")."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.encryption import block_cipher as bc
from cargohold.encryption.block_cipher import BlockCipher, Slot, encode_slot, version_of
from cargohold.encryption.layout import BLOCK, ENTRY
from cargohold.errors import InvalidArgument
from tests.support.encryption_v1 import V1Cipher

KEY = bytes(range(32))
VID = bytes.fromhex("00112233445566778899aabbccddeeff")

# RFC 8452, Appendix C.2 (AEAD_AES_256_GCM_SIV): key, nonce, AAD, plaintext -> result
RFC8452_C2 = [
    ("01" + "00" * 31, "03" + "00" * 11, "", "", "07f5f4169bbf55a8400cd47ea6fd400f"),
    (
        "01" + "00" * 31,
        "03" + "00" * 11,
        "",
        "0100000000000000",
        "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28",
    ),
    (
        "01" + "00" * 31,
        "03" + "00" * 11,
        "",
        "010000000000000000000000",
        "9aab2aeb3faa0a34aea8e2b18ca50da9ae6559e48fd10f6e5c9ca17e",
    ),
]


@pytest.mark.parametrize(("key", "nonce", "aad", "plain", "result"), RFC8452_C2)
def test_aes_256_gcm_siv_known_answers(key, nonce, aad, plain, result):
    aead = AESGCMSIV(bytes.fromhex(key))
    n, a, p = bytes.fromhex(nonce), bytes.fromhex(aad), bytes.fromhex(plain)
    assert aead.encrypt(n, p, a).hex() == result
    assert aead.decrypt(n, bytes.fromhex(result), a) == p


def entry(first: Slot | None, second: Slot | None = None) -> bytes:
    return bc.encode_slot(first) + bc.encode_slot(second)


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=BLOCK, max_size=BLOCK),
    st.integers(0, (1 << 40) - 1),
    st.integers(1, 1000),
    st.integers(1, 1000),
)
def test_round_trip(plain, index, epoch, counter):
    c = BlockCipher(KEY, VID)
    v = bc.version_of(epoch, counter)
    ct, tag = c.seal(index, v, plain)
    assert len(ct) == BLOCK and ct != plain
    assert c.open_block(index, ct, entry(c.slot(v, tag))) == plain
    assert c.open_block(index, ct, entry(None, c.slot(v, tag))) == plain


def test_runs_are_blocks_sealed_one_by_one():
    c = BlockCipher(KEY, VID)
    v = bc.version_of(3, 7)
    plain = bytes(range(256)) * 16 * 5
    out = bytearray(len(plain))
    joined = c.seal_into(10, v, plain, out)
    tags = [joined[p : p + bc.TAG_BYTES] for p in range(0, len(joined), bc.TAG_BYTES)]
    for k in range(5):
        assert c.seal(10 + k, v, plain[k * BLOCK : (k + 1) * BLOCK]) == (
            bytes(out[k * BLOCK : (k + 1) * BLOCK]),
            tags[k],
        )
    back = bytearray(len(plain))
    entries = b"".join(entry(c.slot(v, t)) for t in tags)
    assert c.open_run(10, out, entries, back) == [] and back == plain


class TestTampering:
    """Each class of tampering fails authentication (``open_block`` -> None, counted):
    version-2 slots (AES-256-GCM, derived key), and version-1 slots below."""

    make = BlockCipher

    def setup_method(self):
        self.c = self.make(KEY, VID)
        self.v1, self.v2 = bc.version_of(1, 1), bc.version_of(2, 1)
        self.p0, self.p1 = b"\x11" * BLOCK, b"\x22" * BLOCK
        self.ct0, self.tag0 = self.c.seal(0, self.v1, self.p0)
        self.ct1, self.tag1 = self.c.seal(1, self.v1, self.p1)

    def bad(self, index, ct, ent):
        before = self.c.auth_failures
        assert self.c.open_block(index, ct, ent) is None
        assert self.c.auth_failures == before + 1

    def test_a_bit_flipped_in_the_ciphertext(self):
        for pos in (0, 1234, BLOCK - 1):
            ct = bytearray(self.ct0)
            ct[pos] ^= 0x10
            self.bad(0, ct, entry(self.c.slot(self.v1, self.tag0)))

    def test_a_bit_flipped_in_the_tag_or_the_version(self):
        tag = bytearray(self.tag0)
        tag[5] ^= 1
        self.bad(0, self.ct0, entry(self.c.slot(self.v1, bytes(tag))))
        self.bad(0, self.ct0, entry(self.c.slot(self.v1 + 1, self.tag0)))

    def test_blocks_swapped_within_the_volume(self):
        self.bad(1, self.ct0, entry(self.c.slot(self.v1, self.tag0)))  # block and entry moved
        self.bad(0, self.ct1, entry(self.c.slot(self.v1, self.tag0)))  # the ciphertext only

    def test_a_block_of_another_volume(self):
        other = self.make(KEY, bytes(16))  # same key, another encryption id
        ct, tag = other.seal(0, self.v1, self.p0)
        self.bad(0, ct, entry(other.slot(self.v1, tag)))

    def test_a_wrong_key(self):
        wrong = self.make(bytes(32), VID)
        assert wrong.open_block(0, self.ct0, entry(self.c.slot(self.v1, self.tag0))) is None

    def test_an_older_version_replayed(self):
        _, tag2 = self.c.seal(0, self.v2, self.p1)
        # the entry now holds v2 (newest) and v1 retired: v1's ciphertext is refused
        self.bad(0, self.ct0, entry(bc.RETIRED_SLOT, self.c.slot(self.v2, tag2)))
        # ... and with v1's tag replayed under v2's version
        self.bad(0, self.ct0, entry(self.c.slot(self.v2, self.tag0)))

    def test_the_previous_version_authenticates_until_its_slot_is_retired(self):
        ct2, tag2 = self.c.seal(0, self.v2, self.p1)
        both = bytearray(entry(self.c.slot(self.v1, self.tag0), self.c.slot(self.v2, tag2)))
        assert self.c.open_block(0, ct2, both) == self.p1
        assert self.c.open_block(0, self.ct0, both) == self.p0  # the crash window
        assert bc.retire_older(both, 0)
        assert self.c.open_block(0, ct2, both) == self.p1
        self.bad(0, self.ct0, both)

    def test_a_zeroed_entry_of_a_written_block(self):
        self.bad(0, self.ct0, bytes(ENTRY))

    def test_a_zero_slot_cannot_authenticate_data(self):
        ztag = self.c.zero_tag(0, self.v1)
        self.bad(
            0, self.ct0, entry(self.c.slot(self.v1, self.tag0, zero=True))
        )  # a data tag as ZERO
        self.bad(0, self.ct0, entry(self.c.slot(self.v1, ztag)))  # a ZERO tag as data
        assert self.c.open_block(
            0, self.ct0, entry(self.c.slot(self.v1, ztag, zero=True))
        ) == bytes(BLOCK)


class TestTamperingV1(TestTampering):
    """The same for version-1 slots (AES-256-GCM-SIV under the data key: older volumes)."""

    make = V1Cipher

    def test_flags_and_salt_name_the_format(self):
        # a version-1 slot read as version 2 (GCM flag set) and a version-2 one as 1
        self.bad(0, self.ct0, entry(Slot(self.v1, self.tag0, bc.GCM)))
        c2 = BlockCipher(KEY, VID)
        ct, tag = c2.seal(0, self.v1, self.p0)
        self.bad(0, ct, entry(Slot(self.v1, tag, 0, c2.salt)))
        salt = bytes([c2.salt[0] ^ 1]) + c2.salt[1:]  # another incarnation's salt
        self.bad(0, ct, entry(Slot(self.v1, tag, bc.GCM, salt)))
        assert self.c.open_block(0, ct, entry(c2.slot(self.v1, tag))) == self.p0


def test_never_written_and_torn_first_writes_read_as_zeros():
    c = BlockCipher(KEY, VID)
    v = bc.version_of(1, 1)
    assert c.open_block(5, bytes(BLOCK), bytes(ENTRY)) == bytes(BLOCK)
    _, tag = c.seal(5, v, b"\x01" * BLOCK)
    # the tag reached the disk, the data did not: the block's old content, zeros
    assert c.open_block(5, bytes(BLOCK), entry(c.slot(v, tag))) == bytes(BLOCK)
    # once retired (the data was written), a zeroed ciphertext no longer passes
    assert c.open_block(5, bytes(BLOCK), entry(c.slot(v, tag), bc.RETIRED_SLOT)) is None


def test_slots_alternate_and_keep_the_newest():
    tags = bytearray(BLOCK)
    for n in range(1, 6):
        bc.put_slot(tags, 3, Slot(bc.version_of(1, n), bytes([n]) * 16))
        slots = bc.newest_first(bc.decode_entry(tags[3 * ENTRY : 4 * ENTRY]))
        assert [s.version & 0xFFFF for s in slots] == list(range(n, max(n - 2, 0), -1))
    assert bc.entry_versions(tags)[3] == bc.version_of(1, 5)
    assert bc.entry_versions(tags)[2] == 0
    bc.retire_older(tags, 3)
    bc.put_slot(tags, 3, Slot(bc.version_of(2, 1), b"\x09" * 16))  # into the retired slot
    slots = bc.newest_first(bc.decode_entry(tags[3 * ENTRY : 4 * ENTRY]))
    assert [s.version for s in slots] == [bc.version_of(2, 1), bc.version_of(1, 5)]


def test_bad_keys_ids_and_versions_are_refused():
    with pytest.raises(InvalidArgument, match="32 bytes"):
        BlockCipher(b"short", VID)
    with pytest.raises(InvalidArgument, match="16 bytes"):
        BlockCipher(KEY, b"x")
    with pytest.raises(InvalidArgument):
        bc.version_of(1 << 32, 1)
    with pytest.raises(InvalidArgument):
        bc.version_of(1, 1 << 32)


def test_older_keys_open_what_they_sealed_and_key_index_names_the_key():
    older = BlockCipher(bytes(range(100, 132)), VID)
    ct, tag = older.seal(5, version_of(1, 1), b"a" * BLOCK)
    entry = encode_slot(older.slot(version_of(1, 1), tag)) + encode_slot(None)
    both = BlockCipher([KEY, bytes(range(100, 132))], VID)  # the newest first
    assert both.open_block(5, ct, entry) == b"a" * BLOCK
    assert both.key_index(5, ct, entry) == 1
    ct2, tag2 = both.seal(5, version_of(1, 2), b"b" * BLOCK)  # the newest key seals
    entry2 = encode_slot(both.slot(version_of(1, 2), tag2)) + encode_slot(None)
    assert both.key_index(5, ct2, entry2) == 0
    assert BlockCipher(KEY, VID).open_block(5, ct2, entry2) == b"b" * BLOCK
    assert older.open_block(5, ct2, entry2) is None
    assert both.key_index(5, bytes(BLOCK), bytes(64)) is None  # never written
    with pytest.raises(InvalidArgument, match="1 to 8 data keys"):
        BlockCipher([KEY] * 9, VID)
