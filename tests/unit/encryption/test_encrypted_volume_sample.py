"""The checked-in sample of an encrypted volume's version-1 slots (docs/formats/
encrypted-volume.md): three blocks of group 0 as stored, then group 0's tag block, under
the test key below, as engines before version 2 wrote them (they must keep opening).
Decoded here field by field as the document says, decrypted, and rebuilt byte for byte
(AES-GCM-SIV with a derived nonce is deterministic). Version 2: the ``_v2`` test.

Rebuild it after a deliberate format change:
``CARGOHOLD_REGENERATE=1 .venv/bin/pytest tests/unit/encryption/test_encrypted_volume_sample.py``
"""

from __future__ import annotations

import os
import pathlib
import struct

from cargohold.encryption import block_cipher as bc
from cargohold.encryption.block_cipher import BlockCipher, Slot
from cargohold.encryption.layout import BLOCK, ENTRY, GROUP
from tests.support.encryption_v1 import V1Cipher

SAMPLE = pathlib.Path(__file__).parents[2] / "data" / "encrypted-volume-sample.bin"
KEY = bytes(range(32))  # 000102...1f
VID = bytes.fromhex("c0ffee00c0ffee00c0ffee00c0ffee00")


def text(block: int, version: int) -> bytes:
    line = b"cargohold encrypted-volume sample: block %d, version %#x\n" % (block, version)
    return (line * (BLOCK // len(line) + 1))[:BLOCK]


def build() -> bytes:
    c = V1Cipher(KEY, VID)
    v = [bc.version_of(1, n) for n in range(1, 5)]
    tags = bytearray(BLOCK)
    # block 0: written at v1, then at v2 (both slots held: the v2 data is the stored one)
    _, t01 = c.seal(0, v[0], text(0, v[0]))
    bc.put_slot(tags, 0, Slot(v[0], t01))
    ct0, t02 = c.seal(0, v[1], text(0, v[1]))
    bc.put_slot(tags, 0, Slot(v[1], t02))
    # block 1: zeroed at v3 (a ZERO slot; its ciphertext released: zeros)
    bc.put_slot(tags, 1, Slot(v[2], c.zero_tag(1, v[2]), bc.ZERO))
    # block 2: written at v4, and its other slot retired after the data was written
    ct2, t2 = c.seal(2, v[3], text(2, v[3]))
    bc.put_slot(tags, 2, Slot(v[3], t2))
    bc.retire_older(tags, 2)
    return ct0 + bytes(BLOCK) + ct2 + bytes(tags)


def test_the_sample_is_what_the_code_writes():
    if os.environ.get("CARGOHOLD_REGENERATE"):
        SAMPLE.write_bytes(build())
    assert SAMPLE.read_bytes() == build()


def test_the_sample_decodes_as_documented():
    raw = SAMPLE.read_bytes()
    assert len(raw) == 4 * BLOCK
    data, tags = raw[: 3 * BLOCK], raw[3 * BLOCK :]

    # a slot: version u64 LE at 0, tag at 8..24, flags u8 at 24, 7 reserved zero bytes
    def slot(j: int, k: int) -> tuple[int, bytes, int, bytes]:
        s = tags[j * ENTRY + k * 32 : j * ENTRY + (k + 1) * 32]
        return struct.unpack_from("<Q", s)[0], s[8:24], s[24], s[25:32]

    v1, v2, v3, v4 = (1 << 32 | n for n in range(1, 5))
    assert slot(0, 0)[0] == v1 and slot(0, 1)[0] == v2
    assert slot(1, 0)[0] == v3 and slot(1, 0)[2] == 0x01 and slot(1, 1)[0] == 0
    assert slot(2, 0)[0] == v4 and slot(2, 1)[:3] == (1, bytes(16), 0x02)
    assert all(slot(j, k)[3] == bytes(7) for j in range(3) for k in range(2))
    assert tags[3 * ENTRY :] == bytes((GROUP - 3) * ENTRY)  # never written: empty
    c = BlockCipher(KEY, VID)
    for i, want in ((0, text(0, v2)), (1, bytes(BLOCK)), (2, text(2, v4))):
        got = c.open_block(i, data[i * BLOCK : (i + 1) * BLOCK], tags[i * ENTRY : (i + 1) * ENTRY])
        assert got == want, i
    # the nonce and the associated data, as documented, give block 0's stored tag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

    nonce = struct.pack(">QI", v2, 0)
    ad = VID + struct.pack(">QQ", 0, v2)
    sealed = AESGCMSIV(KEY).encrypt(nonce, text(0, v2), ad)
    assert sealed == data[:BLOCK] + slot(0, 1)[1]
    assert b"cargohold encrypted-volume sample" not in raw
