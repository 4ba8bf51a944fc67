"""keys/data_keys.py and keys/providers.py: wrap/unwrap round trips (hypothesis), a wrong
KEK, a tampered wrapped key, a wrapped key moved to another volume: all refused with the
errors of cargohold/errors.py; the file provider's key files (raw, hex, missing, not a key,
names that would escape the key directory); the in-memory twin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.errors import InvalidArgument, KeyRefused, KeyUnavailable
from cargohold.keys.data_keys import (
    WRAPPED_BYTES,
    DataKey,
    WrappedKey,
    new_data_key,
    new_encryption_id,
    open_sealed,
    parse_kek,
    seal,
)
from cargohold.keys.providers import FileProvider, Keyring, MemoryProvider, check_key_name

keys32 = st.binary(min_size=32, max_size=32)
ids = st.binary(min_size=16, max_size=16).map(bytes.hex)


@given(kek=keys32, dek=keys32, eid=ids)
def test_wrap_unwrap_round_trip(kek: bytes, dek: bytes, eid: str) -> None:
    blob = seal(kek, DataKey(dek), eid)
    assert len(blob) == WRAPPED_BYTES and dek not in blob
    assert open_sealed(kek, blob, eid, "k").key == dek


@given(kek=keys32, other=keys32, dek=keys32, eid=ids)
def test_a_wrong_kek_is_refused(kek: bytes, other: bytes, dek: bytes, eid: str) -> None:
    if kek == other:
        return
    blob = seal(kek, DataKey(dek), eid)
    with pytest.raises(KeyRefused, match="does not unwrap under k2"):
        open_sealed(other, blob, eid, "k2")


@given(dek=keys32, eid=ids, where=st.integers(0, WRAPPED_BYTES - 1), bit=st.integers(0, 7))
def test_every_tampered_bit_is_refused(dek: bytes, eid: str, where: int, bit: int) -> None:
    kek = b"\x07" * 32
    blob = bytearray(seal(kek, DataKey(dek), eid))
    blob[where] ^= 1 << bit
    with pytest.raises(KeyRefused):
        open_sealed(kek, bytes(blob), eid, "k")


def test_a_wrapped_key_moved_to_another_volume_is_refused() -> None:
    kek, eid = b"\x01" * 32, new_encryption_id()
    blob = seal(kek, new_data_key(), eid)
    with pytest.raises(KeyRefused):
        open_sealed(kek, blob, new_encryption_id(), "k")
    with pytest.raises(KeyRefused, match="version-1 blob"):
        open_sealed(kek, blob[:-1], eid, "k")
    with pytest.raises(InvalidArgument, match="encryption id"):
        open_sealed(kek, blob, "xyz", "k")


def test_the_clear_key_never_shows_in_a_repr() -> None:
    dek = new_data_key()
    assert dek.key.hex() not in repr(dek) and "32 bytes" in repr(dek)
    with pytest.raises(InvalidArgument):
        DataKey(b"short")
    with pytest.raises(KeyRefused, match="not base64"):
        WrappedKey.from_b64("file", "k", "!!!")


def test_kek_files_raw_or_hex() -> None:
    raw = os.urandom(32)
    assert parse_kek(raw, "f") == raw
    assert parse_kek(raw.hex().encode() + b"\n", "f") == raw
    for bad in (b"", b"x" * 31, b"z" * 64, raw + b"\n" + raw):
        with pytest.raises(ValueError, match="not a key-encryption key"):
            parse_kek(bad, "f")


def test_the_file_provider(tmp_path: Path) -> None:
    (tmp_path / "good").write_bytes(os.urandom(32))
    (tmp_path / "hex").write_text(os.urandom(32).hex() + "\n")
    (tmp_path / "bad").write_text("hunter2\n")
    (tmp_path / "twin").write_bytes((tmp_path / "good").read_bytes())
    p = FileProvider(tmp_path)
    eid, dek = new_encryption_id(), new_data_key()
    w = p.wrap(dek, "good", eid)
    assert (w.provider, w.key_ref) == ("file", "good")
    assert p.unwrap(w, eid).key == dek.key
    assert p.unwrap(WrappedKey("file", "twin", w.blob), eid).key == dek.key  # same bytes
    with pytest.raises(KeyRefused, match="'hex'"):
        p.unwrap(WrappedKey("file", "hex", w.blob), eid)
    with pytest.raises(KeyUnavailable, match="does not exist"):
        p.check("missing")
    with pytest.raises(KeyUnavailable, match="not a key-encryption key"):
        p.wrap(dek, "bad", eid)
    for name in ("../good", "a/b", "..", ".hidden", "a..b", ""):
        with pytest.raises(InvalidArgument, match="not valid"):
            p.check(name)
    (tmp_path / "good").unlink()  # the KEK gone: nothing unwraps
    with pytest.raises(KeyUnavailable, match="does not exist"):
        p.unwrap(w, eid)


def test_the_in_memory_twin_and_the_keyring() -> None:
    m = MemoryProvider({"a": b"a" * 32})
    eid, dek = new_encryption_id(), new_data_key()
    assert m.unwrap(m.wrap(dek, "a", eid), eid).key == dek.key
    with pytest.raises(KeyUnavailable, match="no key-encryption key 'b'"):
        m.wrap(dek, "b", eid)
    ring = Keyring([m])
    assert ring.get("memory") is m
    with pytest.raises(KeyUnavailable, match="kms-endpoint"):
        ring.get("kms")
    assert check_key_name("team-a.v2_1") == "team-a.v2_1"
