"""The tag-entry codec's fast paths (``put_slot``, ``put_slots``, ``retire_older``,
``may_be_unwritten``: struct offsets, no Slot objects) against the rules written plainly
with ``decode_entry`` and ``newest_first``, on arbitrary entries; and ``open_run`` against
``try_open`` slot by slot."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.encryption import block_cipher as bc
from cargohold.encryption.block_cipher import BlockCipher, Slot
from cargohold.encryption.layout import BLOCK, ENTRY

SLOTS = st.one_of(
    st.none(),
    st.just(bc.RETIRED_SLOT),
    st.builds(
        Slot,
        st.integers(1, 6).map(lambda n: 1 << 32 | n),
        st.binary(min_size=16, max_size=16),
        st.sampled_from([0, bc.ZERO, bc.RETIRED, bc.GCM, bc.GCM | bc.ZERO]),
        st.binary(min_size=6, max_size=6),
    ),
)
ENTRIES = st.tuples(SLOTS, SLOTS)


def raw(entry: tuple[Slot | None, Slot | None]) -> bytearray:
    return bytearray(bc.encode_slot(entry[0]) + bc.encode_slot(entry[1]))


def put_reference(tags: bytearray, j: int, slot: Slot) -> None:
    base = j * ENTRY
    a, b = bc.decode_entry(tags[base : base + ENTRY])
    newest = bc.newest_first((a, b))
    at = base + bc.SLOT if newest and a is newest[0] else base
    tags[at : at + bc.SLOT] = bc.encode_slot(slot)


def retire_reference(tags: bytearray, j: int) -> bool:
    base = j * ENTRY
    a, b = bc.decode_entry(tags[base : base + ENTRY])
    newest = bc.newest_first((a, b))
    if not newest:
        return False
    at = base if b is newest[0] else base + bc.SLOT
    if bc.decode_slot(tags[at : at + bc.SLOT]) == bc.RETIRED_SLOT:
        return False
    tags[at : at + bc.SLOT] = bc.encode_slot(bc.RETIRED_SLOT)
    return True


def unwritten_reference(tags: bytearray, j: int) -> bool:
    a, b = bc.decode_entry(tags[j * ENTRY : (j + 1) * ENTRY])
    live = bc.newest_first((a, b))
    if not live or live[0].zero:
        return False
    other = b if a == live[0] else a
    return other is None or not other.retired


@settings(max_examples=300, deadline=None)
@given(ENTRIES, SLOTS.filter(lambda s: s is not None))
def test_the_fast_codec_follows_the_plain_rules(entry, new):
    want, got = raw(entry), raw(entry)
    assert bc.may_be_unwritten(got, 0) == unwritten_reference(want, 0)
    assert bc.retire_older(got, 0) == retire_reference(want, 0)
    assert got == want
    put_reference(want, 0, new)
    bc.put_slot(got, 0, new)
    assert got == want
    batch = raw(entry) + raw(entry)
    bc.put_slots(batch, 0, new.version, new.tag + new.tag, new.flags, new.salt)
    assert batch == want + want


@settings(max_examples=100, deadline=None)
@given(st.lists(ENTRIES, min_size=1, max_size=4), st.binary(min_size=BLOCK, max_size=BLOCK))
def test_open_run_follows_try_open(entries, ct):
    """Whatever the entries, a block opens as its newest slot that ``try_open`` accepts, or
    zeros beside an empty slot and a zero ciphertext, else fails (and is zeroed)."""
    c = BlockCipher(bytes(range(32)), bytes(16), salt=bytes(6))
    cts, tags = b"", b""
    want: list[bytes | None] = []
    for k, entry in enumerate(entries):
        block = ct if k % 2 else bytes(BLOCK)
        a, b = entry
        if k == 0 and a is not None and not a.retired:  # one that really authenticates
            v = a.version
            sealed, tag = c.seal(k, v, ct)
            a = c.slot(v, c.zero_tag(k, v), zero=True) if a.zero else c.slot(v, tag)
            block = bytes(BLOCK) if a.zero else sealed
        e = bc.encode_slot(a) + bc.encode_slot(b)
        cts, tags = cts + block, tags + e
        opened = None
        for slot in bc.newest_first(bc.decode_entry(e)):
            got = c.try_open(k, slot, block)
            if got is not None:
                opened = got or bytes(BLOCK)
                break
        if opened is None and None in bc.decode_entry(e) and block == bytes(BLOCK):
            opened = bytes(BLOCK)
        want.append(opened)
    out = bytearray(b"\xff" * len(cts))
    bad = c.open_run(0, cts, tags, out)
    assert bad == [k for k, w in enumerate(want) if w is None]
    for k, w in enumerate(want):
        assert out[k * BLOCK : (k + 1) * BLOCK] == (w if w is not None else bytes(BLOCK))
