"""Version-2 slots (docs/encryption.md, "The construction"): AES-256-GCM against the GCM
specification's vectors, HKDF-SHA256 against RFC 5869's, the derived key as documented,
one key per incarnation (salt) and epoch, and version-1 and version-2 slots mixed in one tag
block, every block opening under a new incarnation's cipher."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.encryption import block_cipher as bc
from cargohold.encryption.block_cipher import BlockCipher, derive_block_key, version_of
from cargohold.encryption.layout import BLOCK, ENTRY, GROUP
from cargohold.errors import InvalidArgument
from tests.support.encryption_v1 import V1Cipher

KEY = bytes(range(32))
OLD_KEY = bytes(range(100, 132))
VID = bytes.fromhex("00112233445566778899aabbccddeeff")

# "The Galois/Counter Mode of Operation (GCM)" (McGrew, Viega; the vectors NIST's GCM
# validation uses), test cases 13, 14 and 16 (256-bit keys): key, IV, AAD, plaintext ->
# ciphertext ‖ tag
GCM_VECTORS = [
    ("00" * 32, "00" * 12, "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    (
        "00" * 32,
        "00" * 12,
        "",
        "00" * 16,
        "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]

# RFC 5869, Appendix A.1 and A.3 (HKDF-SHA256): IKM, salt, info, L -> OKM
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("key", "iv", "aad", "plain", "result"), GCM_VECTORS)
def test_aes_256_gcm_known_answers(key, iv, aad, plain, result):
    aead = AESGCM(bytes.fromhex(key))
    n, a, p = bytes.fromhex(iv), bytes.fromhex(aad), bytes.fromhex(plain)
    assert aead.encrypt(n, p, a).hex() == result
    assert aead.decrypt(n, bytes.fromhex(result), a) == p


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_hkdf_sha256_known_answers(ikm, salt, info, length, okm):
    kdf = HKDF(hashes.SHA256(), length, bytes.fromhex(salt) or None, bytes.fromhex(info))
    assert kdf.derive(bytes.fromhex(ikm)).hex() == okm


def test_the_derived_key_and_the_seal_are_as_documented():
    salt, v, i = bytes.fromhex("a1a2a3a4a5a6"), version_of(7, 9), 70000
    info = b"cargohold block key v2" + VID + salt + struct.pack(">I", 7)
    k = HKDF(hashes.SHA256(), 32, None, info).derive(KEY)
    assert derive_block_key(KEY, VID, salt, 7) == k
    plain = bytes(range(256)) * 16
    ct, tag = BlockCipher(KEY, VID, salt=salt).seal(i, v, plain)
    nonce = struct.pack(">QI", v, i & 0xFFFFFFFF)
    ad = VID + struct.pack(">QQ", i, v)
    assert AESGCM(k).encrypt(nonce, plain, ad) == ct + tag
    slot = BlockCipher(KEY, VID, salt=salt).slot(v, tag)
    raw = bc.encode_slot(slot)
    assert raw[24] == bc.GCM and raw[25:31] == salt and raw[31] == 0
    z = BlockCipher(KEY, VID, salt=salt).slot(v, tag, zero=True)
    assert z.flags == bc.GCM | bc.ZERO and z.zero and z.gcm


def test_every_incarnation_and_epoch_has_its_own_key():
    a, b = BlockCipher(KEY, VID), BlockCipher(KEY, VID)
    assert a.salt != b.salt and len(a.salt) == 6  # random, 48 bits
    plain = b"\x5a" * BLOCK
    v = version_of(3, 1)
    assert a.seal(0, v, plain) != b.seal(0, v, plain)  # same key, id, version, index
    same = BlockCipher(KEY, VID, salt=a.salt)
    assert a.seal(0, v, plain) == same.seal(0, v, plain)
    assert derive_block_key(KEY, VID, a.salt, 3) != derive_block_key(KEY, VID, a.salt, 4)
    assert derive_block_key(KEY, VID, a.salt, 3) != derive_block_key(KEY, bytes(16), a.salt, 3)
    with pytest.raises(InvalidArgument, match="6 bytes"):
        BlockCipher(KEY, VID, salt=b"short")


def test_the_derived_key_cache_is_bounded():
    reader = BlockCipher(KEY, VID)
    blocks = []
    for n in range(bc.DERIVED_CACHE + 6):
        w = BlockCipher(KEY, VID, salt=n.to_bytes(6, "big"))
        ct, tag = w.seal(1, version_of(1, 1), bytes([n]) * BLOCK)
        blocks.append((ct, bc.encode_slot(w.slot(version_of(1, 1), tag)) + bytes(32)))
    for _ in range(2):
        for n, (ct, ent) in enumerate(blocks):
            assert reader.open_block(1, ct, ent) == bytes([n]) * BLOCK
    assert len(reader._derived) == bc.DERIVED_CACHE


# one write: (format or incarnation, block j, zero?) -- 0: version 1; 1..3: version-2 engines
WRITES = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 7), st.booleans(), st.booleans()),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(WRITES, st.integers(0, 1 << 20))
def test_version_1_and_2_slots_mixed_in_one_tag_block(writes, g):
    """Engines of both formats (and several incarnations, each with its salt and epoch)
    write blocks of one group in turn; a new incarnation opens every block, and
    ``key_index`` names the old key for the blocks an engine with an older key wrote."""
    tags = bytearray(BLOCK)
    data = bytearray(GROUP * BLOCK)
    want = {j: bytes(BLOCK) for j in range(8)}
    under = {}
    engines = [
        V1Cipher(OLD_KEY, VID),
        BlockCipher(OLD_KEY, VID),
        BlockCipher(KEY, VID),
        BlockCipher([KEY, OLD_KEY], VID),
    ]
    for n, (e, j, zero, retire) in enumerate(writes):
        c, v, i = engines[e], version_of(n + 1, e + 1), g * GROUP + j  # later: newer
        if zero:
            bc.put_slot(tags, j, c.slot(v, c.zero_tag(i, v), zero=True))
            data[j * BLOCK : (j + 1) * BLOCK] = bytes(BLOCK)
            want[j] = bytes(BLOCK)
        else:
            plain = bytes([n + 1, e, j]) * (BLOCK // 3) + bytes(BLOCK % 3)
            ct, tag = c.seal(i, v, plain)
            bc.put_slot(tags, j, c.slot(v, tag))
            data[j * BLOCK : (j + 1) * BLOCK] = ct
            want[j] = plain
        under[j] = 1 if e < 2 else 0
        if retire:
            bc.retire_older(tags, j)
    reader = BlockCipher([KEY, OLD_KEY], VID)
    out = bytearray(8 * BLOCK)
    assert reader.open_run(g * GROUP, data[: 8 * BLOCK], tags[: 8 * ENTRY], out) == []
    for j in range(8):
        assert out[j * BLOCK : (j + 1) * BLOCK] == want[j], j
        got = reader.key_index(
            g * GROUP + j, data[j * BLOCK : (j + 1) * BLOCK], tags[j * ENTRY : (j + 1) * ENTRY]
        )
        assert got == under.get(j), j
    # a reader without the old key: only blocks under the old key may fail (one may still
    # open under its older, unretired slot), the others open as before
    new_only = BlockCipher(KEY, VID)
    out = bytearray(8 * BLOCK)
    bad = new_only.open_run(g * GROUP, data[: 8 * BLOCK], tags[: 8 * ENTRY], out)
    assert set(bad) <= {g * GROUP + j for j in range(8) if under.get(j) == 1}
    for j in range(8):
        if under.get(j) != 1:
            assert out[j * BLOCK : (j + 1) * BLOCK] == want[j], j


@settings(max_examples=30, deadline=None)
@given(
    st.binary(min_size=BLOCK, max_size=BLOCK),
    st.integers(0, (1 << 40) - 1),
    st.integers(1, (1 << 32) - 1),
    st.integers(1, (1 << 32) - 1),
    st.integers(0, 3),
)
def test_tampering_with_a_version_2_block_is_detected(plain, index, epoch, counter, how):
    """Bit flip, block swap (another index), replay of an older version, cross-volume."""
    w = BlockCipher(KEY, VID)
    v = version_of(epoch, counter)
    ct, tag = w.seal(index, v, plain)
    ent = bc.encode_slot(w.slot(v, tag)) + bytes(32)
    reader = BlockCipher(KEY, VID)
    assert reader.open_block(index, ct, ent) == plain
    if how == 0:  # a bit flipped somewhere in the ciphertext or the slot
        ct2, ent2 = bytearray(ct), bytearray(ent)
        pos = (index * 7919 + counter) % (BLOCK + 31)
        if pos < BLOCK:
            ct2[pos] ^= 1 << (counter % 8)
        else:
            ent2[pos - BLOCK] ^= 1 << (counter % 8)
        assert reader.open_block(index, bytes(ct2), bytes(ent2)) is None
    elif how == 1:  # the block (and its entry) at another index
        assert reader.open_block(index ^ 1, ct, ent) is None
    elif how == 2:  # an older version's block, the newer written and the older retired
        v2 = version_of(epoch, counter) + 1 if counter < (1 << 32) - 1 else v + (1 << 32)
        _, tag2 = w.seal(index, v2, plain[::-1])
        newer = bc.encode_slot(w.slot(v2, tag2)) + bc.encode_slot(bc.RETIRED_SLOT)
        assert reader.open_block(index, ct, newer) is None
        # and the old tag presented as the new version
        assert reader.open_block(index, ct, bc.encode_slot(w.slot(v2, tag)) + bytes(32)) is None
    else:  # another volume's block under the same key
        other = BlockCipher(KEY, bytes(16), salt=w.salt)
        oct_, otag = other.seal(index, v, plain)
        assert (
            reader.open_block(index, oct_, bc.encode_slot(other.slot(v, otag)) + bytes(32)) is None
        )
