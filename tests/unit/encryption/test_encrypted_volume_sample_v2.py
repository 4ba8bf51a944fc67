"""The checked-in sample of an encrypted volume's version-2 slots (docs/formats/
encrypted-volume.md, "The sample, version 2"): four blocks of group 0 as stored, then group
0's tag block, under the test key, encryption id and incarnation salt below; block 3 is a
version-1 slot an older engine wrote, beside the version-2 ones. Decoded field by field as
the document says, decrypted, checked against AES-GCM and HKDF called as documented, and
rebuilt byte for byte (a derived key and nonce make the seal deterministic).

Rebuild it after a deliberate format change:
``CARGOHOLD_REGENERATE=1 .venv/bin/pytest tests/unit/encryption/test_encrypted_volume_sample_v2.py``
"""

from __future__ import annotations

import os
import pathlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cargohold.encryption import block_cipher as bc
from cargohold.encryption.block_cipher import BlockCipher
from cargohold.encryption.layout import BLOCK, ENTRY, GROUP
from tests.support.encryption_v1 import V1Cipher
from tests.unit.encryption.test_encrypted_volume_sample import KEY, VID, text

SAMPLE = pathlib.Path(__file__).parents[2] / "data" / "encrypted-volume-sample-v2.bin"
SALT = bytes.fromhex("5a17c0ffee42")


def build() -> bytes:
    old = V1Cipher(KEY, VID)  # an engine of before version 2, at epoch 1
    c = BlockCipher(KEY, VID, salt=SALT)  # the incarnation of epoch 2
    v = [bc.version_of(2, n) for n in range(1, 5)]
    tags = bytearray(BLOCK)
    # block 0: written at v1, then at v2 (both slots held: the v2 data is the stored one)
    _, t01 = c.seal(0, v[0], text(0, v[0]))
    bc.put_slot(tags, 0, c.slot(v[0], t01))
    ct0, t02 = c.seal(0, v[1], text(0, v[1]))
    bc.put_slot(tags, 0, c.slot(v[1], t02))
    # block 1: zeroed at v3 (a ZERO slot; its ciphertext released: zeros)
    bc.put_slot(tags, 1, c.slot(v[2], c.zero_tag(1, v[2]), zero=True))
    # block 2: written at v4, and its other slot retired after the data was written
    ct2, t2 = c.seal(2, v[3], text(2, v[3]))
    bc.put_slot(tags, 2, c.slot(v[3], t2))
    bc.retire_older(tags, 2)
    # block 3: written by the older engine at 1:7 (version 1), retired since
    v17 = bc.version_of(1, 7)
    ct3, t3 = old.seal(3, v17, text(3, v17))
    bc.put_slot(tags, 3, old.slot(v17, t3))
    bc.retire_older(tags, 3)
    return ct0 + bytes(BLOCK) + ct2 + ct3 + bytes(tags)


def test_the_sample_is_what_the_code_writes():
    if os.environ.get("CARGOHOLD_REGENERATE"):
        SAMPLE.write_bytes(build())
    assert SAMPLE.read_bytes() == build()


def test_the_sample_decodes_as_documented():
    raw = SAMPLE.read_bytes()
    assert len(raw) == 5 * BLOCK
    data, tags = raw[: 4 * BLOCK], raw[4 * BLOCK :]

    # a slot: version u64 LE at 0, tag at 8..24, flags u8 at 24, salt at 25..31, 1 zero byte
    def slot(j: int, k: int) -> tuple[int, bytes, int, bytes, int]:
        s = tags[j * ENTRY + k * 32 : j * ENTRY + (k + 1) * 32]
        return struct.unpack_from("<Q", s)[0], s[8:24], s[24], s[25:31], s[31]

    v1, v2, v3, v4 = (2 << 32 | n for n in range(1, 5))
    v17 = 1 << 32 | 7
    assert slot(0, 0)[0] == v1 and slot(0, 1)[0] == v2
    assert slot(0, 0)[2:4] == slot(0, 1)[2:4] == (0x04, SALT)  # GCM, the incarnation's salt
    assert slot(1, 0)[0] == v3 and slot(1, 0)[2:4] == (0x05, SALT) and slot(1, 1)[0] == 0
    assert (
        slot(2, 0)[0] == v4
        and slot(2, 0)[2] == 0x04
        and slot(2, 1)[:4]
        == (
            1,
            bytes(16),
            0x02,
            bytes(6),
        )
    )
    assert slot(3, 0)[0] == v17 and slot(3, 0)[2:4] == (0x00, bytes(6))  # version 1
    assert slot(3, 1)[:3] == (1, bytes(16), 0x02)
    assert all(slot(j, k)[4] == 0 for j in range(4) for k in range(2))
    assert tags[4 * ENTRY :] == bytes((GROUP - 4) * ENTRY)  # never written: empty
    c = BlockCipher(KEY, VID)  # a later incarnation (another salt) reads them all
    want = (text(0, v2), bytes(BLOCK), text(2, v4), text(3, v17))
    for i, w in enumerate(want):
        got = c.open_block(i, data[i * BLOCK : (i + 1) * BLOCK], tags[i * ENTRY : (i + 1) * ENTRY])
        assert got == w, i
    # block 0's stored tag from AES-256-GCM under HKDF-SHA256 as documented
    info = b"cargohold block key v2" + VID + SALT + struct.pack(">I", 2)
    k = HKDF(hashes.SHA256(), 32, None, info).derive(KEY)
    nonce, ad = struct.pack(">QI", v2, 0), VID + struct.pack(">QQ", 0, v2)
    assert AESGCM(k).encrypt(nonce, text(0, v2), ad) == data[:BLOCK] + slot(0, 1)[1]
    # block 1's ZERO tag: the GMAC of the empty plaintext under its nonce and ad
    nonce, ad = struct.pack(">QI", v3, 1), VID + struct.pack(">QQ", 1, v3)
    assert AESGCM(k).encrypt(nonce, b"", ad) == slot(1, 0)[1]
    # block 3, version 1: AES-256-GCM-SIV under the data key itself
    nonce, ad = struct.pack(">QI", v17, 3), VID + struct.pack(">QQ", 3, v17)
    assert AESGCMSIV(KEY).encrypt(nonce, text(3, v17), ad) == data[3 * BLOCK :] + slot(3, 0)[1]
    assert b"cargohold encrypted-volume sample" not in raw
