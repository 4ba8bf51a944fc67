"""The block cipher's native path (``cargohold.encryption._gcm_runs``, C over OpenSSL) against
its pure-Python loop: byte-identical ciphertext and tags, identical reads of every tag-entry
state and tamper class, clear errors for bad lengths, the GCM specification's vectors
through the C code, and the fallback when the module is absent (docs/encryption.md, "Cost").
"""

from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from cargohold.encryption import block_cipher as bc
from cargohold.encryption import native
from cargohold.encryption.block_cipher import BlockCipher, version_of
from cargohold.encryption.layout import BLOCK, ENTRY

runs = native.built
pytestmark = pytest.mark.skipif(runs is None, reason=f"no native block cipher: {native.why}")

KEY = bytes(range(32))
VID = bytes.fromhex("00112233445566778899aabbccddeeff")
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


@pytest.fixture
def path() -> Iterator[None]:
    """Restore the process's path after a test that switches it."""
    before = native.runs, native.why
    yield
    native.runs, native.why = before


def both(fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` on the native path, then on the Python path."""
    before = native.runs, native.why
    try:
        native.use(True)
        a = fn(*args)
        native.use(False)
        b = fn(*args)
    finally:
        native.runs, native.why = before
    return a, b


def seal(c: BlockCipher, first: int, version: int, plain: bytes) -> tuple[bytes, list[bytes]]:
    out = bytearray(len(plain))
    joined = c.seal_into(first, version, plain, out)
    return bytes(out), [joined[p : p + bc.TAG_BYTES] for p in range(0, len(joined), bc.TAG_BYTES)]


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=6, max_size=6),
    st.one_of(st.integers(0, 1 << 40), st.integers((1 << 32) - 8, (1 << 32) + 8)),
    st.integers(1, U32).flatmap(lambda e: st.integers(1, U32).map(lambda n: version_of(e, n))),
    st.integers(0, 9),
    st.randoms(use_true_random=False),
)
def test_native_seals_are_the_python_ones(key, vid, salt, first, version, n, rnd):
    plain = rnd.randbytes(n * BLOCK)
    c = BlockCipher(key, vid, salt=salt)
    (ct, tags), (ct_py, tags_py) = both(seal, c, first, version, plain)
    assert ct == ct_py and tags == tags_py and len(tags) == n
    # and both are AES-256-GCM as documented, block by block
    k = bc.derive_block_key(key, vid, salt, version >> 32)
    for j in range(n):
        i = first + j
        nonce = bc.NONCE.pack(version, i & 0xFFFFFFFF)
        want = AESGCM(k).encrypt(
            nonce, plain[j * BLOCK : (j + 1) * BLOCK], vid + bc.AD_TAIL.pack(i, version)
        )
        assert ct[j * BLOCK : (j + 1) * BLOCK] + tags[j] == want


# a run's history: writes (start, length, writer: 0-1 this key's incarnations, 2 another
# volume's, 3 an older data key's; zeros?, finished: the older slot retired?, a zero write's
# data left as it was?), then tampering
WRITE = st.tuples(
    st.integers(0, 11),
    st.integers(1, 6),
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
TAMPER = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 11), st.integers(0, 8 * BLOCK - 1)),
    st.tuples(st.just("swap"), st.integers(0, 11), st.integers(0, 11)),
    st.tuples(st.just("replay"), st.integers(0, 11), st.integers(0, 11)),
    st.tuples(st.just("tag"), st.integers(0, 11), st.integers(0, 8 * ENTRY - 1)),
    st.tuples(st.just("unretire"), st.integers(0, 11), st.integers(0, 0)),
)
N = 12


def history(writes, tampers):  # type: ignore[no-untyped-def]
    """The ciphertext and tag entries of N blocks after ``writes`` and ``tampers``."""
    old_key = bytes(range(100, 132))
    writers = [
        BlockCipher([KEY, old_key], VID, salt=b"\x01" * 6),
        BlockCipher([KEY, old_key], VID, salt=b"\x02" * 6),
        BlockCipher(KEY, bytes(16), salt=b"\x03" * 6),  # another volume
        BlockCipher(old_key, VID, salt=b"\x04" * 6),  # before a data-key rotation
    ]
    ct, tags = bytearray(N * BLOCK), bytearray(N * ENTRY)
    snapshots = []
    for counter, (start, length, w, zero, finished, keep) in enumerate(writes, 1):
        snapshots.append(bytes(ct))
        length = min(length, N - start)
        c, v = writers[w], version_of(1 + w % 2, counter)
        if zero:
            for j in range(start, start + length):
                bc.put_slot(tags, j, c.slot(v, c.zero_tag(100 + j, v), zero=True))
                if not keep:  # else the older data stays (a ZERO slot holds whatever)
                    ct[j * BLOCK : (j + 1) * BLOCK] = bytes(BLOCK)
        else:
            plain = bytes([counter]) * (length * BLOCK)
            seals = c.seal_into(
                100 + start, v, plain, memoryview(ct)[start * BLOCK : (start + length) * BLOCK]
            )
            c.put_sealed(tags, start, v, seals)
        for j in range(start, start + length):
            if finished:  # else the older slot stays live
                bc.retire_older(tags, j)
    for how, a, b in tampers:
        if how == "flip":
            ct[a * BLOCK + b // 8 % BLOCK] ^= 1 << (b % 8)
        elif how == "swap":
            pa, pb = a * BLOCK, b * BLOCK
            ct[pa : pa + BLOCK], ct[pb : pb + BLOCK] = ct[pb : pb + BLOCK], ct[pa : pa + BLOCK]
        elif how == "replay" and snapshots:
            old = snapshots[b % len(snapshots)]
            ct[a * BLOCK : (a + 1) * BLOCK] = old[a * BLOCK : (a + 1) * BLOCK]
        elif how == "tag":
            tags[a * ENTRY + b // 8 % ENTRY] ^= 1 << (b % 8)
        elif how == "unretire":  # a retired slot's flags cleared: its old version is live
            for s in (a * ENTRY, a * ENTRY + bc.SLOT):
                tags[s + 24] &= ~bc.RETIRED & 0xFF
    return bytes(ct), bytes(tags)


def read(ct: bytes, tags: bytes, lo: int, hi: int):  # type: ignore[no-untyped-def]
    reader = BlockCipher([KEY, bytes(range(100, 132))], VID)
    out = bytearray(b"\xee" * ((hi - lo) * BLOCK))
    bad = reader.open_run(100 + lo, ct[lo * BLOCK : hi * BLOCK], tags[lo * ENTRY : hi * ENTRY], out)
    return bytes(out), bad, reader.auth_failures


@settings(max_examples=150, deadline=None)
@given(
    st.lists(WRITE, max_size=10),
    st.lists(TAMPER, max_size=4),
    st.integers(0, 4).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo + 4, N))),
)
def test_native_reads_are_the_python_ones(writes, tampers, span):
    """Whatever the tag entries (empty, ZERO, retired, other incarnations and epochs, an
    older data key, another volume's blocks) and tampering (bit flips in data or tags,
    swapped blocks, replayed versions): the same plaintext, failures and counts."""
    ct, tags = history(writes, tampers)
    native_read, python_read = both(read, ct, tags, *span)
    assert native_read == python_read


def test_a_tampered_block_fails_on_the_native_path_alone(path):
    native.use(True)
    c = BlockCipher(KEY, VID)
    v = version_of(1, 1)
    plain = os.urandom(8 * BLOCK)
    ct = bytearray(len(plain))
    tags = bytearray(8 * ENTRY)
    c.put_sealed(tags, 0, v, c.seal_into(64, v, plain, ct))
    ct[3 * BLOCK + 17] ^= 4  # block 67: a bit flip
    ct[5 * BLOCK : 6 * BLOCK], ct[6 * BLOCK : 7 * BLOCK] = (
        ct[6 * BLOCK : 7 * BLOCK],
        ct[5 * BLOCK : 6 * BLOCK],
    )
    out = bytearray(len(plain))
    assert c.open_run(64, ct, tags, out) == [67, 69, 70]
    assert c.auth_failures == 3
    for k in range(8):
        want = bytes(BLOCK) if k in (3, 5, 6) else plain[k * BLOCK : (k + 1) * BLOCK]
        assert out[k * BLOCK : (k + 1) * BLOCK] == want


SLOTS = st.one_of(
    st.none(),
    st.just(bc.RETIRED_SLOT),
    st.builds(
        bc.Slot,
        st.integers(1, 3).flatmap(lambda e: st.integers(1, 3).map(lambda n: version_of(e, n))),
        st.binary(min_size=16, max_size=16),
        st.sampled_from([bc.GCM, bc.GCM, bc.GCM, bc.GCM | bc.ZERO, 0, bc.ZERO, bc.RETIRED]),
        st.sampled_from([b"\x01" * 6, b"\x02" * 6]),
    ),
)
ENTRIES = st.tuples(SLOTS, SLOTS)


@settings(max_examples=200, deadline=None)
@given(st.lists(ENTRIES, min_size=0, max_size=6), st.integers(0, 11), st.integers(1, 2))
def test_newest_picks_the_slots_the_python_rules_pick(entries, which, epoch):
    """``newest`` against ``newest_first``: a block goes native under (salt, epoch) when its
    newest live slot is a version-2, non-ZERO slot of that salt and epoch."""
    raw = b"".join(bc.encode_slot(a) + bc.encode_slot(b) for a, b in entries)
    slots = [x for entry in entries for x in entry if x is not None]
    if slots and epoch == 1:  # a slot's own salt and epoch, mostly
        salt, epoch = slots[which % len(slots)].salt, slots[which % len(slots)].version >> 32
    else:
        salt = b"\x01" * 6
    versions, tags, others = runs.newest(raw, salt, epoch)
    want_others = []
    for k, entry in enumerate(entries):
        live = bc.newest_first(entry)
        s = live[0] if live else None
        if s and s.gcm and not s.zero and s.salt == salt and s.version >> 32 == epoch:
            assert versions[8 * k : 8 * k + 8] == s.version.to_bytes(8, "little")
            assert tags[16 * k : 16 * k + 16] == s.tag
            assert bc._native_group(raw, k) == (salt, epoch)
        else:
            want_others.append(k)
            assert versions[8 * k : 8 * k + 8] == bytes(8)
        if s is None or not s.gcm or s.zero:
            assert bc._native_group(raw, k) is None
    assert others == want_others
    event("native blocks" if len(others) < len(entries) else "no native block")
    with pytest.raises(ValueError, match="multiple of 64"):
        runs.newest(raw + b"x", salt, epoch)
    with pytest.raises(ValueError, match="salt"):
        runs.newest(raw, b"x", epoch)


def test_bad_lengths_and_numbers_raise_value_error():
    blk, out = bytes(BLOCK), bytearray(BLOCK)
    v = version_of(1, 1)
    good = (KEY, VID, 0, v, blk, out)
    assert len(runs.seal_run(*good)) == 16
    for i, bad, what in [
        (0, KEY[:31], "key"),
        (1, VID + b"x", "volume id"),
        (2, -1, "first"),
        (2, 1 << 64, "first"),
        (3, -5, "version"),
        (4, blk[:100], "multiple of 4096"),
        (5, bytearray(2 * BLOCK), "out"),
    ]:
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match=what):
            runs.seal_run(*args)
    with pytest.raises(ValueError, match="2\\*\\*64-1"):
        runs.seal_run(KEY, VID, U64, v, bytes(2 * BLOCK), bytearray(2 * BLOCK))
    with pytest.raises(TypeError):
        runs.seal_run(KEY, VID, 0, v, blk, bytes(BLOCK))  # out read-only
    tags = runs.seal_run(KEY, VID, 0, v, blk, out)
    vers = v.to_bytes(8, "little")
    good7 = (KEY, VID, 0, vers, tags, bytes(out), bytearray(BLOCK))
    assert runs.open_run(*good7) == []
    for i, bad, what in [
        (0, b"", "key"),
        (1, b"", "volume id"),
        (2, -1, "first"),
        (3, vers * 2, "versions"),
        (4, tags[:15], "tags"),
        (5, bytes(BLOCK + 1), "multiple of 4096"),
        (6, bytearray(0), "out"),
    ]:
        args = list(good7)
        args[i] = bad
        with pytest.raises(ValueError, match=what):
            runs.open_run(*args)
    assert runs.seal_run(KEY, VID, 0, v, b"", bytearray()) == b""  # an empty run
    assert runs.open_run(KEY, VID, 0, b"", b"", b"", bytearray()) == []


# "The Galois/Counter Mode of Operation (GCM)" (McGrew, Viega), test cases 14 and 16: key,
# IV, plaintext -> ciphertext. The nonce is version (u64 BE) || index mod 2**32 (u32 BE),
# so (version, index) = the IV's halves puts the vector's IV under OpenSSL; GCM's ciphertext
# does not depend on the AD, so the block's first bytes are the vector's (the tag covers our
# AD and length: test_native_seals_are_the_python_ones holds it to cryptography's AESGCM).
GCM_CIPHERTEXT = [
    ("00" * 32, "00" * 12, "00" * 16, "cea7403d4d606b6e074ec5d3baf39d18"),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
    ),
]


@pytest.mark.parametrize(("key", "iv", "plain", "cipher"), GCM_CIPHERTEXT)
def test_the_gcm_specification_vectors_through_the_c_code(key, iv, plain, cipher):
    k, n, p = bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(plain)
    version, index = int.from_bytes(n[:8], "big"), int.from_bytes(n[8:], "big")
    block = p + bytes(BLOCK - len(p))
    out = bytearray(BLOCK)
    tag = runs.seal_run(k, VID, index, version, block, out)
    assert out[: len(p)].hex() == cipher
    vers = version.to_bytes(8, "little")
    back = bytearray(b"\xee" * BLOCK)
    assert runs.open_run(k, VID, index, vers, tag, out, back) == []
    if version == 0:  # version 0 (an empty slot's) means "skip this block": left as it is
        assert back == b"\xee" * BLOCK
        return
    assert back == block
    assert runs.open_run(k, VID, index + 1, vers, tag, out, back) == [0]  # moved
    assert back == bytes(BLOCK)  # a failed block is zeroed


def test_the_switch_and_the_fallback_when_the_module_is_absent(path):
    assert native.status().startswith("encryption_native: true")
    native.use(False)
    assert native.status().startswith("encryption_native: false")
    c = BlockCipher(KEY, VID, salt=bytes(6))
    want = seal(c, 5, version_of(1, 1), bytes(2 * BLOCK))
    native.use(True)
    assert seal(c, 5, version_of(1, 1), bytes(2 * BLOCK)) == want
    # CARGOHOLD_NO_NATIVE=1, and the module missing (an install without a C compiler)
    probe = (
        "import sys\n"
        "if len(sys.argv) > 1: sys.modules['cargohold.encryption._gcm_runs'] = None\n"
        "from cargohold.encryption import native, block_cipher as bc\n"
        f"c = bc.BlockCipher(bytes.fromhex({KEY.hex()!r}), bytes.fromhex({VID.hex()!r}), salt=bytes(6))\n"
        "out = bytearray(8192)\n"
        "print(native.status()); print(c.seal_into(5, 1 << 32 | 1, bytes(8192), out).hex())"
    )
    env = {**os.environ, "CARGOHOLD_NO_NATIVE": "1"}
    for args, environ, why in [((), env, "switched off"), (("absent",), os.environ, "not built")]:
        p = subprocess.run(
            [sys.executable, "-c", probe, *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        status, tags = p.stdout.splitlines()
        assert status.startswith("encryption_native: false") and why in status, p.stderr
        assert bytes.fromhex(tags) == b"".join(want[1])
    with pytest.raises(RuntimeError, match="not available"):
        saved = native.built
        native.built = None
        try:
            native.use(True)
        finally:
            native.built = saved
    assert importlib.import_module("cargohold.encryption._gcm_runs") is runs


def test_the_crash_machine_on_the_python_path(path):
    """tests/unit/frontend/test_encrypted_device_crashes.py's machine runs on the default
    (native) path; a shorter run of it here on the Python path."""
    from tests.unit.frontend.test_encrypted_device_crashes import CrashMachine

    native.use(False)
    run_state_machine_as_test(
        CrashMachine, settings=settings(max_examples=25, stateful_step_count=25, deadline=None)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(st.integers(0, 200), st.integers(U64 - 200, U64 - 140)),
    st.integers(0, 140),
    st.sampled_from([0, 1, 3, 64]),
    st.integers(0, 2**32),
)
def test_sealing_into_an_extent_with_gaps_is_the_same_on_both_paths(first, n, group, seed):
    """``seal_into`` with ``group``: the blocks where a physical extent holds them, a zeroed
    gap after each block ending a group (a tag block's place), whatever ``out`` held
    before (the engine's buffer is not zeroed); byte-identical on both paths, and the
    blocks those of ``seal_run`` without gaps."""
    c = BlockCipher(KEY, VID, salt=b"\x05" * 6)
    v = version_of(3, 9)
    plain = random.Random(seed).randbytes(n * BLOCK)
    gaps = sum(1 for i in range(first, first + n) if group and i % group == group - 1)

    def place(out: bytearray) -> bytes:
        return c.seal_into(first, v, plain, out, group)

    (native_out, native_tags), (py_out, py_tags) = both(_sealed, place, n + gaps)
    assert native_out == py_out and native_tags == py_tags
    flat, flat_tags = seal(c, first, v, plain)
    assert native_tags == b"".join(flat_tags)
    q = 0
    for k in range(n):
        assert native_out[q : q + BLOCK] == flat[k * BLOCK : (k + 1) * BLOCK]
        q += BLOCK
        if group and (first + k) % group == group - 1:
            assert native_out[q : q + BLOCK] == bytes(BLOCK)
            q += BLOCK
    assert q == len(native_out)
    for wrong in (n + gaps + 1, n + gaps - 1) if n + gaps else (1,):
        for use in (True, False):
            before = native.runs, native.why
            native.use(use)
            try:
                with pytest.raises(ValueError, match="out is"):
                    c.seal_into(first, v, plain, bytearray(wrong * BLOCK), group)
            finally:
                native.runs, native.why = before


def _sealed(place, blocks):  # type: ignore[no-untyped-def]
    out = bytearray(b"\xa5" * (blocks * BLOCK))  # garbage where the gaps go
    tags = place(out)
    return bytes(out), tags


def test_a_key_object_seals_and_opens_as_its_bytes_and_keeps_its_contexts():
    key = runs.Key(KEY)
    v = version_of(1, 1)
    plain = os.urandom(8 * BLOCK)
    a, b = bytearray(len(plain)), bytearray(len(plain))
    tags = runs.seal_run(key, VID, 7, v, plain, a)
    assert tags == runs.seal_run(KEY, VID, 7, v, plain, b) and a == b
    vers = v.to_bytes(8, "little") * 8
    for _ in range(3):  # the same contexts, call after call, also after a failed block
        back = bytearray(len(plain))
        assert runs.open_run(key, VID, 7, vers, tags, a, back) == []
        assert back == plain
        assert runs.open_run(key, VID, 8, vers, tags, a, back) == list(range(8))  # moved
        assert runs.seal_run(key, VID, 7, v, plain, b) == tags and a == b
    with pytest.raises(ValueError, match="key"):
        runs.Key(KEY[:31])
    with pytest.raises(ValueError, match="key"):
        runs.seal_run(KEY[:31], VID, 0, v, plain, b)


def test_one_key_sealing_in_several_threads_at_once_gives_every_thread_its_own_bytes():
    """The GIL is released while sealing: a call that finds its Key's context in use keys
    one of its own, so threads sharing a Key never share a context."""
    import threading

    key = runs.Key(KEY)
    v = version_of(2, 5)
    plains = [os.urandom(64 * BLOCK) for _ in range(4)]
    want = []
    for k, p in enumerate(plains):
        out = bytearray(len(p))
        want.append((runs.seal_run(KEY, VID, 64 * k, v, p, out), bytes(out)))
    got: list[list[tuple[bytes, bytes]]] = [[] for _ in plains]

    def seal_many(k: int) -> None:
        for _ in range(30):
            out = bytearray(len(plains[k]))
            got[k].append((runs.seal_run(key, VID, 64 * k, v, plains[k], out), bytes(out)))

    threads = [threading.Thread(target=seal_many, args=(k,)) for k in range(len(plains))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for k in range(len(plains)):
        assert got[k] == [want[k]] * 30


def test_put_slots_checks_its_arguments():
    entries = bytearray(4 * ENTRY)
    tag = bytes(range(16))
    runs.put_slots(entries, 2, version_of(1, 1), tag * 2, bc.GCM, b"\x01" * 6)
    assert bc.decode_entry(entries[2 * ENTRY : 3 * ENTRY])[0] == bc.Slot(
        version_of(1, 1), tag, bc.GCM, b"\x01" * 6
    )
    for args, what in [
        ((entries, 3, 1, tag * 2, 0, bytes(6)), "not in"),
        ((entries, -1, 1, tag, 0, bytes(6)), "not in"),
        ((entries, 0, 1, tag[:15], 0, bytes(6)), "16 per block"),
        ((entries, 0, 1, tag, 0, bytes(5)), "6 bytes"),
        ((entries, 0, 1, tag, 256, bytes(6)), "one byte"),
        ((entries, 0, -1, tag, 0, bytes(6)), "version"),
    ]:
        with pytest.raises(ValueError, match=what):
            runs.put_slots(*args)
    with pytest.raises(TypeError):
        runs.put_slots(bytes(ENTRY), 0, 1, tag, 0, bytes(6))  # read-only
