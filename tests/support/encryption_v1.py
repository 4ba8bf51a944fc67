"""A block cipher that seals version-1 slots (AES-256-GCM-SIV under the data key itself), as
engines did before version-2 slots: the volumes they wrote must keep opening
(docs/formats/encrypted-volume.md). For tests only: the engine never writes version 1."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from cargohold.encryption.block_cipher import ZERO, BlockCipher, Slot
from cargohold.encryption.layout import BLOCK


class V1Cipher(BlockCipher):
    def _siv(self) -> AESGCMSIV:
        return AESGCMSIV(self._keys[0])

    def seal(self, index, version, plaintext):
        nonce, ad = self._nonce_ad(index, version)
        out = self._siv().encrypt(nonce, bytes(plaintext), ad)
        return out[:BLOCK], out[BLOCK:]

    def seal_run(self, first, version, plaintext, out):
        tags = []
        for k in range(len(plaintext) // BLOCK):
            ct, tag = self.seal(first + k, version, plaintext[k * BLOCK : (k + 1) * BLOCK])
            out[k * BLOCK : (k + 1) * BLOCK] = ct
            tags.append(tag)
        return tags

    def zero_tag(self, index, version):
        nonce, ad = self._nonce_ad(index, version)
        return self._siv().encrypt(nonce, b"", ad)

    def slot(self, version, tag, zero=False):
        return Slot(version, tag, ZERO if zero else 0)
